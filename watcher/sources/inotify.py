"""watchdog's inotify observer, taught to tell what it keeps to itself: a directory it could not
watch (the watch limit) and a queue overflow. watchdog 7 internals: hence the pin in pyproject.toml."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
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
)
from watchdog.observers.api import DEFAULT_EMITTER_TIMEOUT, BaseObserver, EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD

#: The watchdog events the translator uses, and the only ones inotify is asked for: the opens and
#: reads of every file and directory (the daemon's own reads and scans) would fill the kernel's queue.
EVENT_TYPES: list[type[FileSystemEvent]] = [
    *(FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent),
    *(DirCreatedEvent, DirDeletedEvent, DirMovedEvent),
]

#: Called by a watch group that lost events: ``True`` for the watch limit, ``False`` for an overflow.
Lost = Callable[[bool], None]


@dataclass
class _WatchGroup(InotifyWatchGroup):
    """watchdog 7's recursive inotify watch (internals: hence the pin in pyproject.toml), telling us
    what watchdog keeps to itself. It skips, silently, a directory it cannot watch because the watch
    limit is reached: that directory's changes would be missed for good. And it answers an overflow by
    removing and re-adding every watch in its reader thread: one IN_IGNORED event per directory,
    which overflows the queue again, for ever, once the tree has as many directories as the queue
    has room (16384 by default). Here an overflow is reported instead, and the watch is renewed."""

    lost: Lost | None = None

    def _add_callback(self, path: bytes) -> None:
        try:
            wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
        except OSError as e:
            if path == self.path:
                raise
            if e.errno == errno.ENOSPC and self.lost is not None:
                self.lost(True)
            return  # otherwise, as watchdog: a directory that vanished or cannot be read
        self._active_callbacks_by_path[path] = wd
        self._active_callbacks_by_watch[wd] = path

    def on_queue_overflow(self) -> None:
        with self._lock:
            if not self.is_active:
                return
            self._move_event_grouper.discard_pending_events()
        if self.lost is not None:
            self.lost(False)


class _Emitter(InotifyEmitter):
    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: float = DEFAULT_EMITTER_TIMEOUT,
        event_filter: list[type[FileSystemEvent]] | None = None,
        inotify_fd: InotifyFD | None = None,
        lost: Lost | None = None,
    ) -> None:
        super().__init__(
            event_queue, watch, timeout=timeout, event_filter=event_filter, inotify_fd=inotify_fd
        )
        self._lost = lost

    def on_thread_start(self) -> None:
        # InotifyEmitter.on_thread_start, with our watch group.
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            event_mask=self.get_event_mask_from_filter(),
            is_recursive=self.watch.is_recursive,
            follow_symlink=self.watch.follow_symlink,
            lost=self._lost,
        )


class InotifyObserver(BaseObserver):
    """watchdog's InotifyObserver with the emitter above: an inotify instance (a queue) per root."""

    def __init__(self, lost: Lost) -> None:
        self._inotify_fd = InotifyFD()  # OSError(EMFILE) at the instance limit
        super().__init__(_Emitter, inotify_fd=self._inotify_fd, lost=lost)
        self._inotify_fd.start()

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._inotify_fd.stop()
        self._inotify_fd.join()
