"""The ``imgwatch`` command line: its parser, and the one place that reports errors and exits.

The commands themselves live in ``imgwatch.commands`` (one module per group); this module puts them
in order, resolves the settings and turns an :class:`ImgwatchError` into a message and an exit status
(``imgwatch.commands.exits``: 78 for a configuration no restart cures, 1 for other fatal errors).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imgwatch import __version__, allocator
from imgwatch.commands.checking import add_check
from imgwatch.commands.deduping import add_dedupe
from imgwatch.commands.duplicates import add_duplicates
from imgwatch.commands.exits import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_QUERY_FAILED,
    exit_status,
)
from imgwatch.commands.indexing import add_compact, add_forget, add_index, add_reindex
from imgwatch.commands.logs import configure_logging
from imgwatch.commands.migrating import add_migrate
from imgwatch.commands.options import command_settings, common_options
from imgwatch.commands.searching import add_search
from imgwatch.commands.status import add_status
from imgwatch.commands.watching import add_invoke, add_watch
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.commands.options import Command
    from imgwatch.config import Settings
    from imgwatch.config.client import ClientSettings

# The exit statuses are re-exported: scripts and tests know them as imgwatch.cli's.
__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CONFIG",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_QUERY_FAILED",
    "build_parser",
    "main",
]

#: The commands in the order ``imgwatch --help`` lists them.
_COMMANDS = (
    add_index,
    add_search,
    add_duplicates,
    add_dedupe,
    add_check,
    add_watch,
    add_invoke,
    add_compact,
    add_reindex,
    add_migrate,
    add_forget,
    add_status,
)


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="imgwatch",
        description="Reverse image search over your folders: VGG16 features kept in Milvus.",
    )
    parser.add_argument("--version", action="version", version=f"imgwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(commands, common)
    return parser


def _settings(args: argparse.Namespace) -> Settings | ClientSettings:
    return command_settings(args)


def main(argv: Sequence[str] | None = None) -> int:
    # Non-UTF-8 file names travel as surrogate escapes; print them back as the original bytes.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or ("info" if args.command == "watch" else "warning"))
    status = EXIT_BROKEN_PIPE
    try:
        status = _run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # another pipe (a child's, a socket's): a real error, with its traceback
        # The reader went away (`imgwatch duplicates | head`): stop quietly, as `ls | head` does,
        # keeping an error's own status if the command had one. Point stdout at /dev/null, so that
        # the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return status if status != EXIT_OK else EXIT_BROKEN_PIPE
    return status


def run() -> int:
    """The ``imgwatch`` command (console script and ``python -m imgwatch``): :func:`main`, then the
    cycle collector frozen for the interpreter's exit.

    At exit the interpreter collects every object the run made (a search: torch's modules, the model,
    pymilvus, SQLAlchemy), which the operating system reclaims anyway; frozen, they are skipped:
    measured on 2 loaded cores, a cold search's cost beyond importing torch fell from 2.38 s to 1.31 s
    (docs/decisions.md, "Cold imgwatch search"). Nothing that must happen at exit waits on that
    collection: stores and files are closed by the command, logging is flushed and Milvus Lite
    released by ``atexit``, which still runs. Here, not in :func:`main`, so that a caller of ``main()``
    in its own process keeps its collector as it was.

    Before anything starts a thread, glibc's allocator is set for VGG16's batches
    (:mod:`imgwatch.allocator`: the model 10-18 % faster), for the same reason here."""
    allocator.tune()
    try:
        return main()
    finally:
        gc.freeze()


def _run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        command: Command = args.run
        return command(args, settings)
    except ImgwatchError as e:
        # One write, newline included: a thread still importing torch (whose -X importtime lines, or
        # log lines, go to stderr too) cannot land between the message and its line end.
        print(f"imgwatch: error: {e}\n", end="", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        print("imgwatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stdout_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has closed it."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by an object without a descriptor
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
