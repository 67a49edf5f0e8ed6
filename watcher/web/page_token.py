"""The search page's own secret, for when no webhook token is set.

The page can move files to the trash (the Duplicates view), so "loopback, no token" is not safe on
a machine with other users: any of them could reach 127.0.0.1. Like Jupyter, the daemon then makes
a random token of its own, kept in the data dir in a file only its owner can read
(:data:`TOKEN_FILE`, mode 0600), the same across restarts so that a bookmarked page keeps working;
a file there that someone else could know (another owner, readable by others, not a plain file) is
replaced.
``imgwatch status`` prints the page's address with it; opening that once sets the page's cookie.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from imgwatch.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE = "page-token"  # noqa: S105 (a file name)
_TOKEN_BYTES = 32


def page_token(data_dir: Path) -> str:
    """The data dir's page token, made on first use.

    Created with ``O_EXCL`` and mode 0600, so two daemons racing (or a file planted by another user)
    cannot hand out a token someone else knows: a file that others can read, that another user
    owns, or that is not a plain file is replaced by a new one. Raises :class:`ConfigError` when no
    private token can be kept there (a file system without Unix modes: set ``webhook_token``).
    """
    path = data_dir / TOKEN_FILE
    existing = _read(path)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    partial = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(8)}")
    _write(partial, token)
    try:
        # A link, not a rename: whoever made the file first wins, and both then hand out its token.
        os.link(partial, path)
    except FileExistsError:
        return page_token(data_dir)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise _unusable(path, e.strerror or str(e)) from e
        # No hard links here (vfat, exFAT, some FUSE mounts): create the file itself, O_EXCL.
        try:
            _write(path, token)
        except FileExistsError:
            return page_token(data_dir)
    finally:
        partial.unlink(missing_ok=True)
    return token


def _write(path: Path, token: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise
    except OSError as e:
        raise _unusable(path, e.strerror or str(e)) from e
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            # Modes fixed by the mount (vfat shows 0755 whatever is asked): not private.
            raise _unusable(path, "the file system gives it to other users too (no Unix modes)")
        os.write(fd, token.encode("ascii") + b"\n")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _unusable(path: Path, why: str) -> ConfigError:
    return ConfigError(
        str(path),
        f"cannot keep the search page's own token there ({why}): set webhook_token "
        "(IMGWATCH_WEBHOOK_TOKEN), which the page then takes",
    )


def _read(path: Path) -> str | None:
    """The token in ``path``, or None when there is none that only we could have written (such a
    file is removed, so a new one can be made)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _unusable(path, e.strerror or str(e)) from e
    usable = stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077
    token = ""
    if usable:
        # O_NONBLOCK: a FIFO swapped in after the lstat must not hang the daemon; O_NOFOLLOW: nor a link.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.ELOOP, errno.ENXIO):
                raise _unusable(path, e.strerror or str(e)) from e
        else:
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    token = os.read(fd, 4096).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
    if token:
        return token
    log.warning("%s is not a private token file of ours: making a new page token in its place", path)
    _remove(path)
    return None


def _remove(path: Path) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)  # an empty directory only: never a tree someone put there
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _unusable(path, f"it is in the way and cannot be removed: {e.strerror or e}") from e
