"""The exit statuses of ``imgwatch``: what a script can tell from how a command ended."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_QUERY_FAILED = 3
EXIT_INTERRUPTED = 130
