"""The exit statuses of ``imgwatch``: what a script, or systemd, can tell from how a command ended.

| status | meaning |
| --- | --- |
| 0 | done (per-file failures are reported and do not change it) |
| 1 | a fatal error that may pass: Milvus unreachable, the data dir in use, a missing root, ... |
| 2 | the command line itself is wrong (argparse) |
| 3 | part of the work failed, the rest was done: ``search`` (queries), ``dedupe`` (files), ``check`` |
| 78 | a configuration problem no retry cures: a bad setting, a token the Milvus server refuses |
| 130 | interrupted (Ctrl-C) |
| 141 | the output's reader went away (piped into `head`), as for a process that SIGPIPE ends |

78 is ``EX_CONFIG`` from sysexits.h. The systemd units name it in ``RestartPreventExitStatus=``,
so a daemon that cannot start with its configuration is not restarted in a loop.
"""

from __future__ import annotations

from imgwatch.errors import ConfigError, ImgwatchError, StoreAuthError

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_QUERY_FAILED = 3
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE

#: The errors that the same configuration raises again on every start: waiting cannot cure them.
CONFIG_ERRORS: tuple[type[ImgwatchError], ...] = (ConfigError, StoreAuthError)


def exit_status(error: ImgwatchError) -> int:
    """The status a command that stops with ``error`` exits with."""
    return EXIT_CONFIG if isinstance(error, CONFIG_ERRORS) else EXIT_FATAL
