"""One writer per data dir: Milvus Lite admits a single process, and the catalog wants one writer.

A POSIX record lock on ``<data-dir>/imgwatch.lock``; the kernel drops it when the holder dies, so a
``kill -9`` never leaves a stale lock behind. :func:`lock_holder` asks the kernel who holds it
(``F_GETLK``) without trying to take it, so ``status`` never disturbs a daemon that is starting.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from imgwatch.errors import DataDirBusyError

LOCK_NAME = "imgwatch.lock"
#: Commands that hold the lock only for a moment; others wait for them instead of failing.
BRIEF_COMMANDS = frozenset({"status", "search"})
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (+pad).
_FLOCK = "hhqqi4x"


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str | None
    """The imgwatch command holding the lock (``watch``, ``index``, ...), as it wrote it."""


def lock_holder(data_dir: Path) -> Holder | None:
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        lock_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
        if lock_type == fcntl.F_UNLCK:
            return None
        content = os.read(fd, 256).decode("utf-8", "replace").split()
    finally:
        os.close(fd)
    command = content[1] if len(content) > 1 else None
    return Holder(pid=pid, command=command)


class DataDirLock:
    """Held for as long as a command has the data dir's stores open."""

    def __init__(self, data_dir: Path, command: str) -> None:
        self._data_dir = data_dir
        self._command = command
        self._fd: int | None = None

    def acquire(self, brief_wait: float = 10.0) -> DataDirLock:
        """Take the lock. A holder that only reads for a moment (``status``, ``search``) is waited
        for up to ``brief_wait`` seconds; any other holder is an immediate :class:`DataDirBusyError`."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + brief_wait
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                holder = lock_holder(self._data_dir)
                if holder is not None and holder.command in BRIEF_COMMANDS and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if holder is None and time.monotonic() < deadline:
                    continue  # released between our attempt and the query
                os.close(fd)
                raise DataDirBusyError(
                    self._data_dir, holder.pid if holder else None, holder.command if holder else None
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self._command}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
