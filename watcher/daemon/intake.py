"""Events in: written to the journal first (so that a crash loses none), then queued for the loop."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable

from imgwatch.events import ImageEvent, RescanRequested, Source
from imgwatch.services.abc import Catalog

log = logging.getLogger(__name__)

Work = tuple[ImageEvent, list[int]]
"""An event and the journal rows it settles when done (none for the daemon's own rescans)."""

_WAKE = RescanRequested("", source=Source.SCAN)


class Intake:
    """The queue between the event sources (any thread) and the main loop (one thread)."""

    def __init__(self, catalog: Callable[[], Catalog], received: Callable[[ImageEvent], None]) -> None:
        self._catalog = catalog
        self._received = received
        # SimpleQueue: its put() is reentrant, so a signal handler may call wake() at any moment.
        self._queue: queue.SimpleQueue[Work] = queue.SimpleQueue()

    def submit(self, event: ImageEvent) -> None:
        """Record ``event`` durably, then queue it. Safe from any thread.

        If the journal cannot be written (a full disk), the event is queued all the same: dropping
        it would leave the change unseen until the next rescan, while a crash before it is handled
        is covered anyway (every start rescans every root)."""
        try:
            ids = [self._catalog().journal_append(event)]
        except Exception as e:  # noqa: BLE001 - the catalog's disk; the event must not be lost here
            log.warning("cannot journal %r (%s: %s); handling it unjournalled", event, type(e).__name__, e)
            ids = []
        self._received(event)
        self._queue.put((event, ids))

    def replay(self) -> int:
        """Queue the journal's unfinished events (from before a stop or a crash), oldest first."""
        pending = self._catalog().journal_pending()
        for journal_id, event in pending:
            self._queue.put((event, [journal_id]))
        return len(pending)

    def rescan(self, root: str) -> None:
        """Queue a scan of ``root`` (the daemon's own, not journalled: it is redone at every start)."""
        self._queue.put((RescanRequested(root, source=Source.SCAN), []))

    def wake(self) -> None:
        """Make a waiting :meth:`take` return now."""
        self._queue.put((_WAKE, []))

    def take(self, timeout: float) -> list[Work]:
        """What has arrived, waiting up to ``timeout`` seconds for the first."""
        try:
            arrived = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self._queue.empty():
            arrived.append(self._queue.get_nowait())
        return [work for work in arrived if work[0] is not _WAKE]
