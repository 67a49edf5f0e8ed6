"""Coalescing: a file is read once it has settled, however many events its writing produced.

Each file (and each directory to scan) has at most one :class:`Pending` entry, keyed by its path
(``scan:<path>`` for scans); new events for it push its moment back and add their journal rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

from imgwatch.events import DirectoryCreated, ImageEvent, ImageModified, RescanRequested, Source
from imgwatch.pathlocks import is_under

#: After close-after-write, wait this long for another write before reading: a burst of saves
#: (an editor, a sync tool) is read once, with its final content.
CLOSED_SETTLE_S = 0.15
#: A file changed again this soon after it was read is "hot": wait for it to settle instead.
HOT_S = 1.0
SCAN_DELAY_S = 0.2
#: Work that failed for a reason outside the image (a store down, a full disk) is retried at most
#: this far apart; when any work succeeds again, everything waiting for a retry is pulled forward.
MAX_RETRY_DELAY_S = 60.0
#: A file a webhook announced but that is not visible yet (a slow network mount) is looked for
#: this many times, backing off, before the announcement is dropped.
WEBHOOK_LOOKS = 5

SCANS = (DirectoryCreated, RescanRequested)
Stat = Callable[[str], "tuple[int, int] | None"]


def backoff(attempts: int) -> float:
    return float(min(MAX_RETRY_DELAY_S, 2 ** min(attempts, 16)))


@dataclass
class Pending:
    """Work waiting for its moment: a file to settle, or a directory to scan."""

    event: ImageEvent
    journal_ids: list[int]
    due: float
    stat: tuple[int, int] | None = None
    attempts: int = 0


class Due(Enum):
    SCAN = "scan"
    READ = "read"
    GONE = "gone"
    """The file vanished before it settled: its journal rows are done (a delete event follows)."""


class Coalescer:
    def __init__(self, settle_s: float, stat: Stat) -> None:
        self._settle_s = settle_s
        self._stat = stat
        self._pending: dict[str, Pending] = {}
        self._last_read: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def file_changed(self, event: ImageEvent, ids: list[int], now: float) -> None:
        # Hot: read (or changed while hot) less than HOT_S ago. A burst keeps a file hot, so its
        # saves are read once more, after the burst, rather than once per save.
        path = event.path  # type: ignore[attr-defined]
        hot = now - self._last_read.get(path, -HOT_S) < HOT_S
        if hot:
            self._last_read[path] = now
        closed = getattr(event, "write_closed", False)
        settle = CLOSED_SETTLE_S if closed and not hot else self._settle_s
        waiting = self._pending.get(path)
        if waiting is None:
            self._pending[path] = Pending(event, ids, now + settle, self._stat(path))
        else:
            waiting.journal_ids += ids
            waiting.due = now + settle
            waiting.stat = self._stat(path)

    def scan_requested(self, event: ImageEvent, ids: list[int], now: float) -> None:
        key = "scan:" + event.path  # type: ignore[attr-defined]
        waiting = self._pending.get(key)
        if waiting is None:
            self._pending[key] = Pending(event, ids, now + SCAN_DELAY_S)
        else:
            waiting.journal_ids += ids

    def cancel(self, path: str, *, under: bool) -> list[int]:
        """Drop the files waiting at ``path`` (or under it); returns their journal rows."""
        keys = [k for k in self._pending if (is_under(k, path) if under else k == path)]
        return [journal_id for key in keys for journal_id in self._pending.pop(key).journal_ids]

    def follow(self, src: str, dest: str, now: float) -> None:
        """Files waiting at or under ``src`` follow a move to ``dest``."""
        for key in [k for k in self._pending if is_under(k, src) and not k.startswith("scan:")]:
            waiting = self._pending.pop(key)
            new_path = dest + key[len(src) :]
            existing = self._pending.get(new_path)
            ids = waiting.journal_ids + (existing.journal_ids if existing else [])
            event = ImageModified(new_path, write_closed=True, source=waiting.event.source)
            self._pending[new_path] = Pending(event, ids, now + CLOSED_SETTLE_S, self._stat(new_path))

    def put_back(self, key: str, waiting: Pending) -> None:
        """Work that failed waits again (merged with what arrived for its path meanwhile)."""
        if key in self._pending:
            self._pending[key].journal_ids += waiting.journal_ids
        else:
            self._pending[key] = waiting

    def take_due(
        self, now: float, skip: Callable[[str, Pending], bool]
    ) -> Iterator[tuple[Due, str, Pending]]:
        """Take the work whose moment has come, except what ``skip`` says must wait."""
        for key, waiting in list(self._pending.items()):
            if waiting.due > now or skip(key, waiting):
                continue
            if isinstance(waiting.event, SCANS):
                del self._pending[key]
                yield Due.SCAN, key, waiting
                continue
            current = self._stat(key)
            if (
                current is None
                and waiting.event.source is Source.WEBHOOK
                and waiting.attempts < WEBHOOK_LOOKS
            ):
                waiting.attempts += 1
                waiting.due = now + backoff(waiting.attempts)
                continue
            if current is None:
                del self._pending[key]
                yield Due.GONE, key, waiting
                continue
            if current != waiting.stat:
                waiting.stat, waiting.due = current, now + self._settle_s
                continue
            del self._pending[key]
            self._last_read[key] = now
            yield Due.READ, key, waiting
        if len(self._last_read) > 10_000:
            self._last_read = {k: t for k, t in self._last_read.items() if now - t < HOT_S}

    def pull_forward(self, now: float) -> None:
        """Work waiting for a retry is due now (the cause of its failure has gone away)."""
        for waiting in self._pending.values():
            if waiting.attempts and waiting.due > now:
                waiting.due = now

    def next_due(self, after: float) -> float | None:
        """The first moment after ``after`` at which some work becomes due."""
        return min((due for due in (p.due for p in self._pending.values()) if due > after), default=None)

    def reading_soon(self, horizon: float) -> bool:
        """A file (not a scan) will be read before ``horizon``."""
        return any(not isinstance(p.event, SCANS) and p.due <= horizon for p in self._pending.values())

    def journal_ids(self) -> Iterator[int]:
        for waiting in self._pending.values():
            yield from waiting.journal_ids
