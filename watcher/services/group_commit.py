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

A combined write that fails is made again one caller at a time: one bad item (a path the server
refuses, say) fails only its own caller, as it did when each wrote alone. An entry left unwritten
(an interrupt in the writing thread) is written by its own caller, who waits only while a write is
in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    items: list[T]
    done: bool = False
    error: BaseException | None = None


@dataclass
class GroupCommitStats:
    calls: int = 0
    """Calls made to the store (combined writes, and the one-caller writes after a failed one)."""
    writes: int = 0
    """Callers' writes (``write`` calls) those stood for."""
    sizes: dict[int, int] = field(default_factory=dict)
    """How many combined writes took how many callers' writes."""


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
        while True:
            with self._lock:
                while self._writing and not entry.done:
                    self._lock.wait()
                if entry.done:
                    break
                self._writing = True
                batch = self._take()
            try:
                self._write(batch)
            finally:
                with self._lock:
                    self._writing = False
                    self._lock.notify_all()
        if entry.error is not None:
            raise entry.error

    def _take(self) -> list[_Entry[T]]:
        """The queue's first entries, up to ``limit`` items (always at least one entry)."""
        taken, count = 0, 0
        for entry in self._queue:
            if taken and count + len(entry.items) > self._limit:
                break
            taken, count = taken + 1, count + len(entry.items)
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    def _write(self, batch: list[_Entry[T]]) -> None:
        try:
            self._call([item for entry in batch for item in entry.items], len(batch))
        except Exception as e:  # noqa: BLE001 - each caller gets its own items' error below
            if len(batch) == 1:
                self._finish(batch, e)
                return
            for entry in batch:
                try:
                    self._call(entry.items, 0)
                except Exception as own:  # noqa: BLE001 - raised in its caller's thread
                    self._finish([entry], own)
                else:
                    self._finish([entry], None)
        else:
            self._finish(batch, None)

    def _call(self, items: list[T], callers: int) -> None:
        with self._lock:
            self._stats.calls += 1
            if callers:
                self._stats.writes += callers
                self._stats.sizes[callers] = self._stats.sizes.get(callers, 0) + 1
        self._write_many(items)

    def _finish(self, entries: list[_Entry[T]], error: BaseException | None) -> None:
        with self._lock:
            for entry in entries:
                entry.done, entry.error = True, error
