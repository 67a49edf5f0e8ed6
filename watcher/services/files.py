"""Reading image files: one read per file, with the hash and the stat taken from that read."""

from __future__ import annotations

import errno
import os
import stat

from imgwatch.errors import ImageError
from imgwatch.services.abc import FileBlob, content_hash


class LocalFileReader:
    """The real file access service (see :class:`imgwatch.services.abc.FileReader`)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    def stat(self, path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None

    def gone(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError as e:
            # Only these say nothing is there; EACCES, EIO or ELOOP say we cannot tell right now.
            return e.errno in (errno.ENOENT, errno.ENOTDIR)
        return not stat.S_ISREG(st.st_mode)

    def read(self, path: str) -> FileBlob:
        try:
            # O_NONBLOCK: opening a FIFO that someone named x.jpg must not hang the indexer.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            if os.path.islink(path):
                raise ImageError("broken symbolic link (its target does not exist)") from None
            raise ImageError("file vanished before it could be read") from None
        except OSError as e:
            raise ImageError(_describe(e)) from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ImageError("not a regular file")
            if before.st_size > self._max_bytes:
                raise ImageError(
                    f"file is {before.st_size / 2**20:.0f} MiB, over the limit of "
                    f"{self._max_bytes / 2**20:.0f} MiB (max_file_bytes)"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(self._max_bytes + 1)
            after = os.fstat(fd)
        except OSError as e:
            raise ImageError(_describe(e)) from None
        finally:
            os.close(fd)
        if len(data) > self._max_bytes:
            raise ImageError(
                f"file grew past the limit of {self._max_bytes / 2**20:.0f} MiB while being read"
            )
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(
            data
        ) != after.st_size:
            # A writer is still at it; the next event (or index run) will see the finished file.
            raise ImageError("file changed while it was being read")
        return FileBlob(
            path=path,
            data=data,
            size=after.st_size,
            mtime_ns=after.st_mtime_ns,
            content_hash=content_hash(data),
        )


def _describe(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.ENOENT:
        return "file vanished before it could be read"
    if error.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    return f"cannot read file: {error.strerror or error}"
