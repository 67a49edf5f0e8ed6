"""The ``imgwatch`` commands, one module per group; ``imgwatch.cli`` assembles them.

Each command module has an ``add_<command>(commands, common)`` that declares the command's parser
and sets its ``run`` (``(args, settings) -> exit status``). This package is part of the CLI layer:
it prints, and its functions return exit statuses (``exits``); nothing below it does either.
Module tops import nothing heavy (torch, pymilvus, FastAPI, SQLAlchemy): ``imgwatch --help`` loads
every module here.
"""
