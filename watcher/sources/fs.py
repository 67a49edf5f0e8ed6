"""Filesystem source: watchdog observers over the roots, translated into typed events.

One observer per root, so that one root can be polled (a network filesystem, or inotify's watch
limit reached) while the others use inotify.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from imgwatch.events import (
    DirectoryCreated,
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageModified,
    ImageMoved,
    RescanRequested,
    Source,
)
from imgwatch.scan import ScanRules, has_image_extension
from imgwatch.sources.inotify import EVENT_TYPES, InotifyObserver

log = logging.getLogger(__name__)

#: Names that writers use while a file is incomplete; the final rename is what counts.
TEMPORARY_PATTERNS = (
    "*.part",
    "*.partial",
    "*.tmp",
    "*.temp",
    "*.crdownload",
    "*.download",
    ".~*",
    "~$*",
    "*.swp",
)

#: Filesystems whose changes made elsewhere inotify never reports: watched by polling.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "davfs",
        "fuse",
        "fuseblk",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
    }
)

Emit = Callable[[ImageEvent], None]


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem ``path`` lives on (``ext4``, ``nfs4``, ``fuse.sshfs``...)."""
    target = os.fsencode(os.path.realpath(path))
    best, best_type = b"", None
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(b" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
        mount_point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip(b"/") + b"/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, os.fsdecode(right.split()[0])
    return best_type


def is_network_filesystem(fs_type: str | None) -> bool:
    return fs_type is not None and (fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("fuse."))


@dataclass(frozen=True)
class PathFilter:
    """Which paths below a root are images we index (the same rules as ``index``, plus temp names)."""

    root: str
    rules: ScanRules

    def _relative(self, path: str) -> str | None:
        relative = os.path.relpath(path, self.root)
        return None if relative == ".." or relative.startswith("../") else relative

    def directory_counts(self, path: str) -> bool:
        relative = self._relative(path)
        if relative is None:
            return False
        if relative == ".":
            return True
        parts = relative.split(os.sep)
        if not self.rules.include_hidden and any(p.startswith(".") for p in parts):
            return False
        return not any(
            fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(part, p)
            for p in self.rules.exclude
            for part in parts
        )

    def file_counts(self, path: str) -> bool:
        name = os.path.basename(path)
        if not has_image_extension(name) or any(fnmatch.fnmatchcase(name, p) for p in TEMPORARY_PATTERNS):
            return False
        if not self.directory_counts(os.path.dirname(path)):
            return False
        relative = self._relative(path)
        assert relative is not None
        if not self.rules.include_hidden and name.startswith("."):
            return False
        if any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in self.rules.exclude):
            return False
        return not self.rules.include or any(
            fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in self.rules.include
        )


class EventTranslator(FileSystemEventHandler):
    """Turns one root's watchdog events into typed events. Decides nothing about what to do."""

    def __init__(self, paths: PathFilter, emit: Emit) -> None:
        self._paths = paths
        self._emit = emit

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Synthetic events (watchdog's guesses about a moved directory's contents) are skipped: the
        # directory-level event and the scan that follows it cover them exactly.
        if event.is_synthetic:
            return
        try:
            for typed in self._translate(event):
                self._emit(typed)
        except Exception:
            log.exception("could not record %r; the next rescan of this root will catch up", event)

    def _translate(self, event: FileSystemEvent) -> list[ImageEvent]:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        fs = Source.FILESYSTEM
        paths = self._paths
        if isinstance(event, FileClosedEvent) and paths.file_counts(src):
            return [ImageModified(src, write_closed=True, source=fs)]
        if isinstance(event, FileCreatedEvent) and paths.file_counts(src):
            return [ImageCreated(src, source=fs)]
        if isinstance(event, FileModifiedEvent) and paths.file_counts(src):
            return [ImageModified(src, source=fs)]
        if isinstance(event, FileDeletedEvent) and has_image_extension(src):
            return [ImageDeleted(src, source=fs)]
        if isinstance(event, FileMovedEvent):
            was, now = paths.file_counts(src), paths.file_counts(dest)
            if was and now:
                return [ImageMoved(src, dest, source=fs)]
            if now:  # "write a temporary name, then rename into place": one new, complete file
                return [ImageCreated(dest, write_closed=True, source=fs)]
            return [ImageDeleted(src, source=fs)] if was or has_image_extension(src) else []
        if isinstance(event, DirCreatedEvent) and paths.directory_counts(src):
            return [DirectoryCreated(src, source=fs)]
        if isinstance(event, DirDeletedEvent):
            return [DirectoryDeleted(src, source=fs)]
        if isinstance(event, DirMovedEvent):
            was, now = paths.directory_counts(src), paths.directory_counts(dest)
            if was and now:
                return [DirectoryMoved(src, dest, source=fs), DirectoryCreated(dest, source=fs)]
            if now:
                return [DirectoryCreated(dest, source=fs)]
            return [DirectoryDeleted(src, source=fs)]
        return []


# ---- lost events: an overflow of the kernel's queue, the watch limit reached later ------------------

_rescan_lock = threading.Lock()
_rescanners: list[tuple[frozenset[str], Emit]] = []


@contextmanager
def overflow_rescans(roots: list[str], emit: Emit) -> Iterator[None]:
    """While the block runs, a watch on one of ``roots`` that lost events (inotify's queue
    overflowed, or its watch limit was reached below the root) asks for a rescan of its root, once it
    watches again. Each root has an inotify instance, so a queue of its own: the others lost nothing."""
    entry = (frozenset(roots), emit)
    with _rescan_lock:
        _rescanners.append(entry)
    try:
        yield
    finally:
        with _rescan_lock:
            _rescanners.remove(entry)


def _ask_for_rescan(root: str) -> None:
    with _rescan_lock:
        emits = [emit for roots, emit in _rescanners if root in roots]
    for emit in emits:
        emit(RescanRequested(root, source=Source.FILESYSTEM))


# ---- a root's watch ------------------------------------------------------------------------------


class RootWatch:
    """One root, watched by inotify or, where inotify cannot serve it, polled. A watch that lost
    events (see :func:`overflow_rescans`) watches its root anew, by polling if the watch limit is
    reached, and then asks for a rescan."""

    def __init__(
        self,
        root: str,
        handler: EventTranslator,
        *,
        poll_reason: str | None,
        poll_interval: float,
        follow: bool,
    ) -> None:
        self.root = root
        self._handler = handler
        self._poll_interval = poll_interval
        self._follow = follow
        self._lock = threading.Lock()
        self._renew_lock = threading.Lock()
        self._stopped = False
        self._renewing = False
        self.observer, self.mode = self._start(poll_reason)
        """``mode``: ``inotify`` or ``polling (reason)``."""

    def alive(self) -> bool:
        """watchdog ends a watch whose root was deleted; the observer thread itself lives on."""
        if self._renewing:
            return True
        observer = self.observer
        return observer.is_alive() and any(emitter.is_alive() for emitter in list(observer.emitters))

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self.observer.stop()
            self.observer.join(timeout=10)

    def _start(self, reason: str | None) -> tuple[BaseObserver, str]:
        if reason is None:
            try:
                return self._start_inotify(), "inotify"
            except OSError as e:
                reason = _refused(self.root, e)
        log.info("polling %r every %g s: %s", self.root, self._poll_interval, reason)
        poller = PollingObserver(timeout=self._poll_interval)
        poller.schedule(
            self._handler, self.root, recursive=True, event_filter=EVENT_TYPES, follow_symlink=self._follow
        )
        poller.start()
        return poller, f"polling ({reason})"

    def _start_inotify(self) -> BaseObserver:
        starting, limit_reached = True, False

        def lost(limit: bool) -> None:
            nonlocal limit_reached
            if starting:
                # An overflow now is covered by the scan that follows every start; a directory
                # left unwatched for the limit fails the start.
                limit_reached = limit_reached or limit
            else:
                self._renew(limit)

        observer = InotifyObserver(lost)
        try:
            observer.schedule(
                self._handler,
                self.root,
                recursive=True,
                event_filter=EVENT_TYPES,
                follow_symlink=self._follow,
            )
            observer.start()
        except OSError:
            observer.stop()
            raise
        starting = False
        if limit_reached:
            observer.stop()
            observer.join(timeout=10)
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return observer

    def _renew(self, limit: bool) -> None:
        """Called in watchdog's reader thread, under its locks: the renewal runs in a thread of its own
        (``_lock`` may be held by one that waits for this reader thread to end)."""
        with self._renew_lock:
            if self._stopped or self._renewing:
                return
            self._renewing = True
        threading.Thread(target=self._renewal, args=(limit,), name="imgwatch-rewatch", daemon=True).start()

    def _renewal(self, limit: bool) -> None:
        log.warning(
            "%s below %r: events were lost; watching it anew, then rescanning it%s",
            "inotify's watch limit is reached" if limit else "inotify's event queue overflowed",
            self.root,
            "" if limit else ". If this recurs, raise fs.inotify.max_queued_events with sysctl",
        )
        with self._lock:
            try:
                if self._stopped:
                    return
                # The old watch goes first: both at once could need twice the watch limit. What
                # changes in between, the rescan finds.
                self.observer.stop()
                self.observer.join(timeout=10)
                self.observer, self.mode = self._start(None)
            except OSError as e:
                log.error("cannot watch %r again: %s", self.root, e)
                return  # not alive now: the daemon's root check takes over
            finally:
                self._renewing = False
        _ask_for_rescan(self.root)


def _refused(root: str, error: OSError) -> str:
    """Why inotify cannot watch ``root``, logged with the fix; ``error`` again if no limit explains it."""
    if error.errno == errno.ENOSPC:
        log.error(
            "cannot watch %r with inotify: the per-user watch limit is reached. Raise it with "
            "`sudo sysctl fs.inotify.max_user_watches=1048576` (and add that line to "
            "/etc/sysctl.d/90-imgwatch.conf to keep it); polling this root meanwhile",
            root,
        )
        return "inotify watch limit reached"
    if error.errno == errno.EMFILE:
        log.error(
            "cannot watch %r with inotify: too many inotify instances. Raise "
            "fs.inotify.max_user_instances with sysctl; polling this root meanwhile",
            root,
        )
        return "inotify instance limit reached"
    raise error


def watch_root(
    root: str, rules: ScanRules, emit: Emit, *, force_poll: bool = False, poll_interval: float = 5.0
) -> RootWatch:
    """Start watching ``root`` recursively. Network filesystems are polled, and so is a root whose
    inotify watches cannot all be added; the reason is logged and reported in ``status``."""
    fs_type = filesystem_type(root)
    reason = None
    if force_poll:
        reason = "forced by configuration"
    elif is_network_filesystem(fs_type):
        reason = f"{fs_type} is a network filesystem; inotify would miss changes made elsewhere"
    handler = EventTranslator(PathFilter(root, rules), emit)
    return RootWatch(
        root, handler, poll_reason=reason, poll_interval=poll_interval, follow=rules.follow_symlinks
    )
