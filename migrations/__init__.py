"""Alembic migrations that own the catalog's schema.

:func:`upgrade` is what the application calls on start; ``alembic -c migrations/alembic.ini ...``
works too for people who want the usual Alembic commands (``history``, ``downgrade``).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

HERE = Path(__file__).resolve().parent


def alembic_config(engine: Engine | None = None) -> Config:
    """The Alembic configuration for these migrations; with ``engine``, one that connects to it by
    itself (for Alembic commands run without a connection handed over in ``attributes``)."""
    config = Config()
    # Main options go through ConfigParser interpolation, where "%" starts a reference.
    config.set_main_option("script_location", str(HERE).replace("%", "%%"))
    if engine is not None:
        # The engine itself, not its URL as a string: a rendered URL does not survive a path with
        # "?" or "#" before SQLAlchemy 2.1 (which began quoting the database part), and "%" would need
        # escaping for the interpolation. env.py connects with it.
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database behind ``engine`` to ``revision``. Safe to call on every start."""
    # No URL in the config: env.py runs on the connection handed over, so nothing would read it.
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
