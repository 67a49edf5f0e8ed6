"""The Duplicates view's computed results: each computed once per index generation, in the background.

A duplicates pass takes minutes on a large library (Milvus Lite: ~10 min at 50k vectors), so no
request waits for one: the first request for a key starts the computation and is answered "still
computing"; later ones page through the finished result. When the index changes (a new file, a
verdict, a trashed copy), the result of the previous generation is still served, marked stale,
while the next one is computed: a busy daemon would otherwise never show anything. One computation
runs at a time (each holds the serving context, and two passes would only slow each other); the
last key asked for while one runs is the one computed next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Results kept for this many keys (thresholds tried while reviewing), the least recently used dropped.
MAX_KEYS = 8


@dataclass(frozen=True)
class Done(Generic[V]):
    value: V
    generation: Hashable
    """The index generation read before the computation started: changes made while it ran make it
    stale, never the reverse."""
    computed_at: datetime
    seconds: float


@dataclass(frozen=True)
class Answer(Generic[V]):
    """What a request gets: a finished result (perhaps stale), or none yet."""

    done: Done[V] | None
    stale: bool
    """``done`` is of an older generation; its successor is being computed."""
    running_since: datetime | None
    """When the computation for this key started, while it runs."""
    error: str | None = None
    """The last computation for this key failed (it is tried again on the next request)."""


class ComputedCache(Generic[K, V]):
    """``compute(key)`` results per key and index generation (see the module's docstring)."""

    def __init__(self, compute: Callable[[K], V], generation: Callable[[], Hashable], name: str) -> None:
        self._compute = compute
        self._generation = generation
        self._name = name
        self._lock = threading.Lock()
        self._done: OrderedDict[K, Done[V]] = OrderedDict()
        self._errors: dict[K, str] = {}
        self._running: tuple[K, datetime] | None = None
        self._next: K | None = None

    def get(self, key: K) -> Answer[V]:
        """The result for ``key`` now, starting its computation if it is missing or stale."""
        generation = self._generation()
        with self._lock:
            done = self._done.get(key)
            if done is not None:
                self._done.move_to_end(key)
                if done.generation == generation:
                    return Answer(done, stale=False, running_since=None)
            error = self._errors.pop(key, None)
            if error is None:
                self._start(key)
            running = self._running
            since = running[1] if running is not None and running[0] == key else None
            return Answer(done, stale=done is not None, running_since=since, error=error)

    def peek(self, key: K) -> V | None:
        """The last finished result for ``key``, stale or not, without starting anything."""
        with self._lock:
            done = self._done.get(key)
            return done.value if done is not None else None

    def patch(self, change: Callable[[V], V]) -> None:
        """Apply what the page itself just did (a verdict, trashed files) to every kept result, so
        that it shows at once; the recomputation the changed generation causes confirms it."""
        with self._lock:
            for key, done in self._done.items():
                self._done[key] = Done(change(done.value), done.generation, done.computed_at, done.seconds)

    def _start(self, key: K) -> None:
        """With the lock held: compute ``key`` now, or next if another computation runs."""
        if self._running is not None:
            if self._running[0] != key:
                self._next = key
            return
        self._running = (key, datetime.now(UTC))
        # A daemon thread: an unfinished pass must not hold the daemon past its stop bound; it is
        # only a cache, recomputed on demand after a restart.
        threading.Thread(target=self._work, args=(key,), name=f"imgwatch-{self._name}", daemon=True).start()

    def _work(self, key: K) -> None:
        while True:
            generation = self._generation()
            started = time.monotonic()
            try:
                value = self._compute(key)
            except Exception as e:
                log.exception("%s for %r failed", self._name, key)
                with self._lock:
                    self._errors[key] = f"{type(e).__name__}: {e}"
            else:
                seconds = time.monotonic() - started
                with self._lock:
                    self._done[key] = Done(value, generation, datetime.now(UTC), seconds)
                    self._done.move_to_end(key)
                    while len(self._done) > MAX_KEYS:
                        self._done.popitem(last=False)
            with self._lock:
                following, self._next = self._next, None
                if following is None or following == key:
                    self._running = None
                    return
                key = following
                self._running = (key, datetime.now(UTC))
