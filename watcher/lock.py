"""One writer per data dir: Milvus Lite admits a single process, and the catalog wants one writer.

An open file description lock (Linux ``F_OFD_SETLK``) on ``<data-dir>/imgwatch.lock``; the kernel
drops it when the holder dies, so a ``kill -9`` never leaves a stale lock behind. :func:`lock_holder`
asks the kernel whether it is held (``F_OFD_GETLK``) without trying to take it, so ``status`` never
disturbs a daemon that is starting.

Why this kind of lock:

- Not a classic POSIX record lock (``lockf``, ``F_SETLK``): that belongs to the *process*, and closing
  *any* descriptor of the file releases it, so a holder that asked :func:`lock_holder` (which opens
  and closes the file) lost its own lock without a word; and a second :class:`DataDirLock` in the same
  process "succeeded", its release dropping the first one's lock. An OFD lock belongs to the one
  descriptor :meth:`DataDirLock.acquire` opened: other descriptors come and go without touching it,
  and a second lock in the same process is refused like anyone else's.
- Not ``flock``: it cannot be queried without trying to take it, and it does not see POSIX locks,
  which earlier versions of imgwatch take. OFD and POSIX locks on one file do conflict, so an older
  imgwatch on the same data dir is still kept out, both ways.

What it costs: the kernel does not say which process holds an OFD lock (``l_pid`` is -1), so the
holder's PID is read from the file, where :meth:`DataDirLock.acquire` writes it. And a child forked
without exec shares the lock until it exits; the descriptor is ``O_CLOEXEC``, so children that exec
(Milvus Lite's server) do not.
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
#: Pause between two tries to take a lock someone else holds.
RETRY_INTERVAL_S = 0.05
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (+pad).
_FLOCK = "hhqqi4x"


def _whole_file(lock_type: int) -> bytes:
    # l_pid must be 0 for the OFD commands (EINVAL otherwise); l_len 0 covers the file however long it grows.
    return struct.pack(_FLOCK, lock_type, os.SEEK_SET, 0, 0, 0)


@dataclass(frozen=True)
class Holder:
    pid: int | None
    """The holding process, as it wrote itself into the lock file (``None`` if it has not yet)."""
    command: str | None
    """The imgwatch command holding the lock (``watch``, ``index``, ...), as it wrote it."""


def lock_holder(data_dir: Path) -> Holder | None:
    """Who holds the data dir's lock, or ``None`` when nobody does. Safe to call while holding it
    (it then names this process): the descriptor it opens and closes is not the lock's."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _whole_file(fcntl.F_WRLCK))
        lock_type, _, _, _, kernel_pid = struct.unpack(_FLOCK, answer)
        if lock_type == fcntl.F_UNLCK:
            return None
        content = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    finally:
        os.close(fd)
    written_pid = int(content[0]) if content and content[0].isdigit() else None
    # A POSIX lock (an older imgwatch) comes with its PID from the kernel; an OFD lock with -1.
    pid = kernel_pid if kernel_pid > 0 else written_pid
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
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _whole_file(fcntl.F_WRLCK))
                break
            except OSError:
                holder = lock_holder(self._data_dir)
                # No holder: it let go between our try and our look (or the file was replaced under
                # us). Either way try again, but after a pause, like every retry: never spin.
                if (holder is None or holder.command in BRIEF_COMMANDS) and time.monotonic() < deadline:
                    time.sleep(RETRY_INTERVAL_S)
                    continue
                os.close(fd)
                raise DataDirBusyError(
                    self._data_dir, holder.pid if holder else None, holder.command if holder else None
                ) from None
        # Write first, then cut: the file is never empty, so lock_holder() reads a whole line (for an
        # instant the previous holder's, until this write lands).
        line = f"{os.getpid()} {self._command}\n".encode()
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the last descriptor of the open file description: the lock goes
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
