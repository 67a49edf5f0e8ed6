"""A vector store opened when it is first used, so that a run with nothing to store opens none.

Opening Milvus Lite loads its collection into the process: measured on 20,200 4096-d vectors, 7.7 s
and most of a 1.1 GiB RSS, and importing pymilvus (with pandas) another 1.5 s. An ``index`` of an
unchanged tree compares the catalog with the disk and needs none of it (issue 17).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class LazyStore:
    """Stands for the :class:`~imgwatch.services.vectors.MilvusVectorStore` that ``open`` makes, and
    makes it at the first attribute that needs it (every store call). :meth:`open` makes it now:
    callers that will store anything open it before loading a model, so that an unreachable server
    fails in a second rather than after the load."""

    def __init__(self, open_store: Callable[[], Any], collection: str, *, alone: bool) -> None:
        self._open = open_store
        self._collection = collection
        self._alone = alone
        """Whether this watcher is alone in its collection (no ``node``): then a move writes nothing
        to the store (MilvusVectorStore.rename), and need not open it."""
        self._store: Any = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def collection(self) -> str:
        return self._collection

    @property
    def opened(self) -> bool:
        return self._store is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self) -> Any:
        """The store, opened now if it was not yet."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._closed:
                raise RuntimeError("the vector store was closed")
            if self._store is None:
                self._store = self._open()
            return self._store

    def movable(self, ids: Iterable[int]) -> set[int]:
        """Which of ``ids`` a move can carry. Alone in its collection and not yet open: all of them,
        as the catalog vouches (a row has its vector only once it is stored). Opening Milvus Lite to
        check would cost more than the moves: measured 64 s for 10,000 moves in a 100,000-vector
        collection, most of it the open. A vector lost behind the catalog's back is re-created by
        reconcile wherever its row is, moved or not."""
        if self._alone and self._store is None:
            return set(ids)
        return set(self.open().movable(ids))

    def rename(self, items: Sequence[tuple[int, str]]) -> None:
        if self._alone and self._store is None:
            return  # what MilvusVectorStore.rename does alone, without opening it first
        self.open().rename(items)

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not define itself; dunders stay unforwarded so that
        # copy, pickle and friends see a plain object instead of opening Milvus.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.open(), name)

    def close(self) -> None:
        with self._lock:
            store, self._store, self._closed = self._store, None, True
        if store is not None:
            store.close()


def store_opening(store: object) -> bool:
    """Whether ``store`` is a :class:`LazyStore` not opened yet (a daemon opens its own in the
    background: a search or a status must not wait on it unknowingly)."""
    return isinstance(store, LazyStore) and not store.opened and not store.closed


def open_now(store: object) -> None:
    """Open ``store`` now if it is a :class:`LazyStore` (any other store is open already)."""
    if isinstance(store, LazyStore):
        store.open()
