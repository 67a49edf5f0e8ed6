"""The search page's own secret, for when no webhook token is set.

The page can move files to the trash (the Duplicates view), so "loopback, no token" is not safe on
a machine with other users: any of them could reach 127.0.0.1. Like Jupyter, the daemon then makes
a random token of its own, kept in the data dir in a file only its owner can read
(:data:`TOKEN_FILE`, mode 0600), the same across restarts so that a bookmarked page keeps working.
``imgwatch status`` prints the page's address with it; opening that once sets the page's cookie.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "page-token"  # noqa: S105 (a file name)
_TOKEN_BYTES = 32


class PageTokenError(OSError):
    """The token file exists but cannot be used (unreadable, empty, not a regular file)."""


def page_token(data_dir: Path) -> str:
    """The data dir's page token, made on first use.

    Created with ``O_EXCL`` and mode 0600, so two daemons racing (or a file planted by another user)
    cannot hand out a token someone else knows: a file that others can read or that another user
    owns is replaced by a new one.
    """
    path = data_dir / TOKEN_FILE
    existing = _read(path)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    partial = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(8)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, token.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # A link, not a rename: whoever made the file first wins, and both then hand out its token.
        os.link(partial, path)
    except FileExistsError:
        return page_token(data_dir)
    finally:
        partial.unlink()
    return token


def _read(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            log.warning("%s is a symbolic link: making a new page token in its place", path)
            path.unlink()
            return None
        raise PageTokenError(e.errno, f"cannot read the search page's token: {e.strerror}", str(path)) from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PageTokenError(errno.EINVAL, "the search page's token is not a regular file", str(path))
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            # Someone else may know it: never use it.
            log.warning("%s could be read by others: making a new page token", path)
            os.close(fd)
            fd = -1
            path.unlink()
            return None
        token = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        if fd >= 0:
            os.close(fd)
    if not token:
        log.warning("%s is empty: making a new page token", path)
        path.unlink()
        return None
    return token
