"""One computation per key among callers that overlap in time (Go's ``singleflight``).

Copies of a new image that are handled together would each run the model; keyed by content hash
(and extractor signature), the first caller computes and the others wait for its result, or its
failure, and use that same result.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Shares the result of one ``compute()`` per key between the callers of :meth:`shared`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future[T]] = {}
        self._computed = 0
        self._joined = 0

    @property
    def computed(self) -> int:
        """How many callers led a flight (ran ``compute``)."""
        return self._computed

    @property
    def joined(self) -> int:
        """How many callers took the result of a flight another caller led."""
        return self._joined

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    @contextlib.contextmanager
    def shared(self, key: Hashable, compute: Callable[[], T]) -> Iterator[T]:
        """``compute()``'s result, computed once for every caller that enters while the key is held.

        The first caller (the leader) computes; its result or its exception reaches every caller
        waiting on the same key. The key stays held until the leader's block ends, not only until
        the result is known: the leader's block stores the result (where a later caller finds it
        without computing), so a caller arriving in between still joins instead of computing again.
        A failed ``compute`` releases the key at once, and its exception is raised to every caller.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
                self._computed += 1
            else:
                self._joined += 1
        if not leader:
            yield flight.result()
            return
        try:
            try:
                result = compute()
            except BaseException as e:
                flight.set_exception(e)
                raise
            flight.set_result(result)
            yield result
        finally:
            with self._lock:
                del self._flights[key]
