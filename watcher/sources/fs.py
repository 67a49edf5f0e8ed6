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
from watchdog.observers import Observer
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


class OverflowListener(logging.Handler):
    """watchdog rebuilds its watches when inotify's queue overflows but tells only its log: listen
    there, and ask for a rescan of the root, since events were lost."""

    def __init__(self, roots: list[str], emit: Emit) -> None:
        super().__init__(level=logging.WARNING)
        self._roots = roots
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" not in record.getMessage().lower():
            return
        for root in self._roots:
            self._emit(RescanRequested(root, source=Source.FILESYSTEM))


@contextmanager
def overflow_rescans(roots: list[str], emit: Emit) -> Iterator[None]:
    """While the block runs, an inotify queue overflow asks for a rescan of every root in ``roots``."""
    listener = OverflowListener(roots, emit)
    watchdog_log = logging.getLogger("watchdog.observers")
    watchdog_log.addHandler(listener)
    if watchdog_log.getEffectiveLevel() > logging.WARNING:
        watchdog_log.setLevel(logging.WARNING)  # the overflow warning must reach the listener
    try:
        yield
    finally:
        watchdog_log.removeHandler(listener)


@dataclass
class RootWatch:
    root: str
    observer: BaseObserver
    mode: str
    """``inotify`` or ``polling (reason)``."""

    def alive(self) -> bool:
        """watchdog ends a watch whose root was deleted; the observer thread itself lives on."""
        return self.observer.is_alive() and any(emitter.is_alive() for emitter in self.observer.emitters)

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=10)


def watch_root(
    root: str, rules: ScanRules, emit: Emit, *, force_poll: bool = False, poll_interval: float = 5.0
) -> RootWatch:
    """Start watching ``root`` recursively. Network filesystems are polled, and so is a root whose
    inotify watches cannot all be added; the reason is logged and reported in ``status``."""
    handler = EventTranslator(PathFilter(root, rules), emit)
    fs_type = filesystem_type(root)
    reason = None
    if force_poll:
        reason = "forced by configuration"
    elif is_network_filesystem(fs_type):
        reason = f"{fs_type} is a network filesystem; inotify would miss changes made elsewhere"
    if reason is None:
        observer: BaseObserver = Observer()
        try:
            observer.schedule(handler, root, recursive=True, follow_symlink=rules.follow_symlinks)
            observer.start()
            return RootWatch(root, observer, "inotify")
        except OSError as e:
            observer.stop()
            if e.errno == errno.ENOSPC:
                reason = "inotify watch limit reached"
                log.error(
                    "cannot watch %r with inotify: the per-user watch limit is reached. Raise it with "
                    "`sudo sysctl fs.inotify.max_user_watches=1048576` (and add that line to "
                    "/etc/sysctl.d/90-imgwatch.conf to keep it); polling this root meanwhile",
                    root,
                )
            elif e.errno == errno.EMFILE:
                reason = "inotify instance limit reached"
                log.error(
                    "cannot watch %r with inotify: too many inotify instances. Raise "
                    "fs.inotify.max_user_instances with sysctl; polling this root meanwhile",
                    root,
                )
            else:
                raise
    log.info("polling %r every %.0f s: %s", root, poll_interval, reason)
    poller = PollingObserver(timeout=poll_interval)
    poller.schedule(handler, root, recursive=True, follow_symlink=rules.follow_symlinks)
    poller.start()
    return RootWatch(root, poller, f"polling ({reason})")
