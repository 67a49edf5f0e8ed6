"""Writes that many threads make at once, made as one store call (group commit).

The daemon and ``index`` store each new image from its own handler thread: one Milvus upsert and one
catalog transaction per file. With the int8 model those per-call costs (the gRPC round trip, Milvus
Lite's per-call work, SQLAlchemy's per-statement work) took a share of the two cores that the model
needs. Here a caller that finds no write in flight writes at once (no timer, no added latency: a lone
dropped file is stored as before); callers that arrive while a write is in flight queue their items,
and when it returns the first of them writes everything queued, in one call.

Each caller returns only when its own items are written, and raises if they were not, so the order
of effects a handler relies on (vector stored, then row marked indexed) holds for every file, and a
crash (kill -9) anywhere leaves what a crash of the separate calls would have left.

A combined write that fails is made again by each of its callers, alone, in the caller's own thread
and at the same time as the others: one bad item (a path the server refuses, say) fails only its own
caller, with its own error and traceback, as when each wrote alone; and a store that is busy or down
costs each caller about what one write would have, not one write after another. An entry whose
write was interrupted (an exception that is not an ``Exception`` in the writing thread) goes back to
the head of the queue for the next writer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)  # entries are told apart by identity: two callers may write equal items
class _Entry(Generic[T]):
    items: list[T]
    done: bool = False
    alone: bool = False
    """The combined write it was in failed: its caller writes it again by itself."""
    error: Exception | None = None
    """Why its own write (a batch of it alone) failed."""


@dataclass
class GroupCommitStats:
    calls: int = 0
    """Calls made to the store (combined writes, and callers' writes alone after a failed one)."""
    writes: int = 0
    """Callers' writes (``write`` calls) the combined calls stood for."""
    sizes: dict[int, int] = field(default_factory=dict)
    """How many combined calls took how many callers' writes."""


class GroupCommit(Generic[T]):
    """Hand :meth:`write` calls from many threads to ``write_many`` together, at most ``limit`` items
    (or one caller's items, if more) per call."""

    def __init__(self, write_many: Callable[[Sequence[T]], None], *, limit: int) -> None:
        self._write_many = write_many
        self._limit = limit
        self._lock = threading.Condition()
        self._queue: list[_Entry[T]] = []
        self._writing = False
        self._stats = GroupCommitStats()

    @property
    def stats(self) -> GroupCommitStats:
        with self._lock:
            return GroupCommitStats(self._stats.calls, self._stats.writes, dict(self._stats.sizes))

    @property
    def queued(self) -> int:
        """Callers whose items wait for the write in flight to end."""
        with self._lock:
            return len(self._queue)

    def write(self, items: Sequence[T]) -> None:
        """Write ``items``, with whatever other threads are writing meanwhile; raises what writing
        them raised."""
        entry = _Entry(list(items))
        with self._lock:
            self._queue.append(entry)
        try:
            while self._lead_or_wait(entry):
                pass
        except BaseException:
            with self._lock:  # interrupted while waiting: nobody writes it after its caller gave up
                if entry in self._queue:
                    self._queue.remove(entry)
            raise
        if entry.error is not None:
            raise entry.error  # it was written by itself, in this thread
        if entry.alone:
            self._call(entry.items, callers=0)  # raises this caller's own error, in its own thread

    def _lead_or_wait(self, entry: _Entry[T]) -> bool:
        """Write a batch if none is in flight, else wait for the one that is; True while ``entry``
        is neither written nor handed back to its caller."""
        with self._lock:
            while self._writing and not (entry.done or entry.alone):
                self._lock.wait()
            if entry.done or entry.alone:
                return False
            self._writing = True
            batch = self._take()
        try:
            self._write(batch, entry)
        finally:
            with self._lock:
                self._writing = False
                # Interrupted before its end: what it did not settle is written by the next writer.
                self._queue[:0] = [e for e in batch if not (e.done or e.alone)]
                self._lock.notify_all()
        return not (entry.done or entry.alone)

    def _take(self) -> list[_Entry[T]]:
        """The queue's first entries, up to ``limit`` items (always at least one entry: the caller's
        own entry is in the queue while it is neither written nor handed back)."""
        taken, count = 0, 0
        for entry in self._queue:
            if taken and count + len(entry.items) > self._limit:
                break
            taken, count = taken + 1, count + len(entry.items)
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    def _write(self, batch: list[_Entry[T]], own: _Entry[T]) -> None:
        error: Exception | None = None
        try:
            self._call([item for entry in batch for item in entry.items], callers=len(batch))
        except Exception as e:  # noqa: BLE001 - each caller raises its own below
            error = e
        with self._lock:
            if error is not None and len(batch) == 1 and batch[0] is own:
                own.done, own.error = True, error  # this thread's own write failed: not tried again
                return
            for entry in batch:
                entry.done, entry.alone = error is None, error is not None

    def _call(self, items: list[T], *, callers: int) -> None:
        with self._lock:
            self._stats.calls += 1
            if callers:
                self._stats.writes += callers
                self._stats.sizes[callers] = self._stats.sizes.get(callers, 0) + 1
        self._write_many(items)
