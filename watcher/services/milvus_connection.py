"""Clients of one Milvus: a server, or a Milvus Lite file whose in-process server this process shares.

Every store and every brief client (dropping collections) goes through :class:`MilvusConnection`, which
counts the clients of each URI, releases a Lite file's server when its last client closes, and turns a
refused token into :class:`~imgwatch.errors.StoreAuthError`.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imgwatch.errors import DataDirBusyError, StoreAuthError, StoreUnavailableError

# Milvus Lite runs one in-process server per file, shared by every client of that file, and has no
# reference count of its own: a store that released it would pull it from under another store (the
# serving collection and a reindex's new one live in the same file). Writes share one lock per file,
# because the WAL race (see MilvusConnection.__init__) is in the file's server, not per collection.
# The count is kept for servers too: it is how many clients of each URI this process holds open.
_users: Counter[str] = Counter()
_write_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()


def _acquire(uri: str, *, lite: bool) -> threading.Lock:
    with _registry_lock:
        _users[uri] += 1
        return _write_locks.setdefault(uri, threading.Lock()) if lite else threading.Lock()


def _release_user(uri: str) -> bool:
    """True when the last client of ``uri`` closed (so a Lite file's server may go)."""
    with _registry_lock:
        _users[uri] -= 1
        if _users[uri] > 0:
            return False
        del _users[uri]
        return True


#: Writes to each collection by this process, by ``(uri, collection)``. Milvus Lite admits one process
#: per file, so a Lite count taken since the last write is still exact (counting walks every entity in
#: Python); every write and every drop, through a store or not, goes through :func:`note_write`.
_writes: Counter[tuple[str, str]] = Counter()


def note_write(uri: str, collection: str) -> None:
    with _registry_lock:
        _writes[(uri, collection)] += 1


def writes_to(uri: str, collection: str) -> int:
    with _registry_lock:
        return _writes[(uri, collection)]


def open_connections(uri: str) -> int:
    """How many clients of the Milvus at ``uri`` (stores, and the brief ones that drop collections)
    this process holds open now: each store's own, until it is closed."""
    with _registry_lock:
        return _users[uri]


def auth_failure(error: BaseException) -> str | None:
    """The server's words if ``error`` (or what caused it) is a refused token, else None.

    pymilvus 3.0 raises ``MilvusException(code=2, "Fail connecting ... illegal connection params or
    server unavailable")`` at connect, the same as for a server that is down; only the gRPC error
    under it tells them apart: UNAUTHENTICATED (measured on Milvus 2.3.5: "auth check failure, please
    check username and password are correct", "missing authorization in header"). Later calls, after
    the password changed or the user was dropped, raise that gRPC error itself.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # gRPC errors can be their own context
        seen.add(id(current))
        code = getattr(current, "code", None)
        status = code() if callable(code) else None
        if getattr(status, "name", None) == "UNAUTHENTICATED":
            details = getattr(current, "details", None)
            return str(details() if callable(details) else current) or "unauthenticated"
        current = current.__cause__ or current.__context__
    return None


class _AuthChecked:
    """A ``MilvusClient`` whose calls raise :class:`StoreAuthError` for a refused token, not a bare
    gRPC error that callers would take for an outage and retry (a token does not come right by
    itself)."""

    def __init__(self, client: Any, uri: str, *, token_given: bool) -> None:
        self._client = client
        self._uri = uri
        self._token_given = token_given

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except Exception as e:
                if (detail := auth_failure(e)) is None:
                    raise
                raise StoreAuthError(self._uri, detail, token_given=self._token_given) from e

        return checked


class MilvusConnection:
    """A client of one Milvus: a server, or a Lite file whose in-process server this process shares."""

    def __init__(self, uri: str, token: str | None) -> None:
        from pymilvus import MilvusClient

        self._uri = uri
        self._lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        # Milvus Lite's WAL opens its file lazily without a lock: two concurrent upserts can both open
        # it, and one write then lands in a file object that is dropped (measured: ResourceWarning
        # "unclosed file ... wal_data_*.arrow" with 12 writer threads). Writes go one at a time.
        self.write_lock = _acquire(uri, lite=self._lite)
        self._closed = False
        self.client: Any
        try:
            client = MilvusClient(uri=uri, token=token or "")
        except Exception as e:
            self._release()
            cause = e.__cause__ or e.__context__
            if type(cause).__name__ == "DataDirLockedError":
                raise DataDirBusyError(Path(uri).parent, None, None) from e
            if (detail := auth_failure(e)) is not None:
                raise StoreAuthError(uri, detail, token_given=bool(token)) from e
            raise StoreUnavailableError(uri, str(e)) from e
        self.client = client if self._lite else _AuthChecked(client, uri, token_given=bool(token))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.close()
        self._release()

    def _release(self) -> None:
        if _release_user(self._uri) and self._lite:
            # Milvus Lite serves the file from a gRPC server thread in this process; closing the client
            # leaves it running (and the file locked) until exit unless we release it.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._uri)


def drop_collections(uri: str, token: str | None, names: Iterable[str]) -> None:
    """Drop these collections where they exist (for ``index --rebuild``)."""
    connection = MilvusConnection(uri, token)
    try:
        for name in names:
            if connection.client.has_collection(name):
                with connection.write_lock:
                    connection.client.drop_collection(name)
                    note_write(uri, name)
    finally:
        connection.close()
