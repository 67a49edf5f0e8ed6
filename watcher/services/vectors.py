"""The vector store: a Milvus collection (Milvus Lite file by default, or a server by URI).

Entities are ``(id INT64, path VARCHAR, vector FLOAT_VECTOR)``. Integer keys, not path keys: pymilvus
mangles VARCHAR primary keys containing ``'`` or ``\\`` in ``get``/``delete(ids)``, and an integer
survives renames. The path is kept as a scalar so a plain Milvus client can read results too.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgwatch.errors import DataDirBusyError, ImgwatchError, StoreAuthError, StoreUnavailableError
from imgwatch.services.abc import SearchHit, Vector

log = logging.getLogger(__name__)

METRIC = "IP"  # vectors are L2-normalised, so inner product is cosine similarity
PATH_MAX_BYTES = 65535
NODE_MAX_BYTES = 255
#: Milvus keys are ``node_id << ROW_BITS | catalog row id``: several watchers, each with its own
#: catalog, can share one collection without colliding (2^40 rows per node, 2^23 nodes).
ROW_BITS = 40
MAX_NODE_ID = 2**23 - 1
_DEFAULT_INDEX_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "HNSW_SQ": {"M": 16, "efConstruction": 200, "sq_type": "SQ8"},
    "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128},
}


# Milvus Lite runs one in-process server per file, shared by every client of that file, and has no
# reference count of its own: a store that released it would pull it from under another store (the
# serving collection and a reindex's new one live in the same file). Writes share one lock per file,
# because the WAL race (see MilvusVectorStore.__init__) is in the file's server, not per collection.
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


def open_connections(uri: str) -> int:
    """How many clients of the Milvus at ``uri`` (stores, and the brief ones that drop collections)
    this process holds open now: each store's own, until it is closed."""
    with _registry_lock:
        return _users[uri]


def auto_index_params(index_type: str, entities: int) -> dict[str, Any]:
    """Index parameters suited to a collection of ``entities`` vectors.

    IVF indexes want about 4 * sqrt(N) clusters (Milvus' own guidance); a fixed nlist is either too
    coarse for a big collection (slow scans) or too fine for a small one (empty clusters, lost recall).
    """
    params = dict(_DEFAULT_INDEX_PARAMS.get(index_type, {}))
    if index_type.startswith("IVF"):
        params["nlist"] = int(min(65536, max(16, round(4 * entities**0.5))))
    return params


def default_index_spec(index_type: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"type": index_type, "params": dict(params or _DEFAULT_INDEX_PARAMS.get(index_type, {}))}


def drop_collections(uri: str, token: str | None, names: Iterable[str]) -> None:
    """Drop these collections where they exist (for ``index --rebuild``)."""
    connection = _Connection(uri, token)
    try:
        for name in names:
            if connection.client.has_collection(name):
                with connection.write_lock:
                    connection.client.drop_collection(name)
    finally:
        connection.close()


def milvus_string(value: str) -> str:
    """``value`` as a double-quoted Milvus expression string literal, safe for any characters.

    Only the escapes both Milvus Lite and the server's parser know are used (``\" \' \\ \n \r \t``);
    other control characters are legal as they are inside a literal.
    """
    escaped = []
    for ch in value:
        if ch in ('"', "\\"):
            escaped.append("\\" + ch)
        elif ch == "\n":
            escaped.append("\\n")
        elif ch == "\r":
            escaped.append("\\r")
        elif ch == "\t":
            escaped.append("\\t")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def stored_path(path: str) -> str:
    """The path as Milvus can hold it: valid UTF-8, undecodable bytes shown as ``\\xNN``.

    The catalog keeps the exact bytes; this copy is for readers that only have Milvus. It is clipped
    to ``PATH_MAX_BYTES`` UTF-8 bytes (at a character boundary): a Milvus server counts VARCHAR
    ``max_length`` in bytes and refuses the whole upsert batch if one path is longer, while Milvus Lite
    counts characters (measured: 21,846 x "€" = 65,536 bytes passes Lite, fails Milvus 2.3.5). Results
    are read back by id from the catalog, so a clipped copy loses nothing there.
    """
    encoded = os.fsencode(path).decode("utf-8", "backslashreplace").encode()
    return encoded[:PATH_MAX_BYTES].decode("utf-8", "ignore")


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


class _Connection:
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


class MilvusVectorStore:
    """The real vector store service (see :class:`imgwatch.services.abc.VectorStore`)."""

    def __init__(
        self,
        uri: str,
        *,
        dimension: int,
        collection: str = "imgwatch",
        token: str | None = None,
        index_type: str = "FLAT",
        index_params: Mapping[str, Any] | None = None,
        node_id: int = 0,
        node: str = "",
    ) -> None:
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node_id must be within 0..{MAX_NODE_ID}")
        self._node_id = node_id
        self._node = node
        self._own = (node_id << ROW_BITS, (node_id + 1) << ROW_BITS)
        self._has_node_field = True
        self._collection = collection
        self._dimension = dimension
        self._index_type = index_type
        self._index_params = dict(index_params or _DEFAULT_INDEX_PARAMS.get(index_type, {}))
        self._uri = uri
        self._connection = _Connection(uri, token)
        self._client = self._connection.client
        self._write_lock = self._connection.write_lock
        try:
            self._ensure_collection()
        except BaseException:
            self._connection.close()  # nobody else can: the caller never gets this store
            raise

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def collection(self) -> str:
        return self._collection

    @property
    def index_spec(self) -> dict[str, Any]:
        """The ANN index this store creates its collection with: ``{"type": ..., "params": {...}}``."""
        return {"type": self._index_type, "params": self._index_params}

    def collections(self) -> list[str]:
        return sorted(self._client.list_collections())

    def _ensure_collection(self) -> None:
        from pymilvus import DataType

        client = self._client
        if client.has_collection(self._collection):
            fields = client.describe_collection(self._collection)["fields"]
            dims = [f["params"].get("dim") for f in fields if f["name"] == "vector"]
            if dims and int(dims[0]) != self._dimension:
                raise ImgwatchError(
                    f"Milvus collection {self._collection!r} at {self._uri} holds {dims[0]}-d vectors, "
                    f"but the extractor makes {self._dimension}-d ones; rebuild with "
                    "`imgwatch index --rebuild ROOT...` or choose another collection"
                )
            # Collections made before watchers could share one have no node field.
            self._has_node_field = any(f["name"] == "node" for f in fields)
            # A reopened collection starts out released; searches and gets need it loaded.
            client.load_collection(self._collection)
            return
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dimension)
        schema.add_field("node", DataType.VARCHAR, max_length=NODE_MAX_BYTES)
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector", index_type=self._index_type, metric_type=METRIC, params=self._index_params
        )
        client.create_collection(
            self._collection, schema=schema, index_params=index, consistency_level="Strong"
        )
        log.info(
            "created Milvus collection %r (%s, %s) at %s",
            self._collection,
            self._index_type,
            METRIC,
            self._uri,
        )

    @property
    def node_id(self) -> int:
        return self._node_id

    def _key(self, row_id: int) -> int:
        if self._node_id == 0:
            return row_id  # alone in the collection: keys are the catalog ids, as before nodes existed
        if not 0 <= row_id < 1 << ROW_BITS:
            raise ValueError(f"row id {row_id} does not fit in {ROW_BITS} bits")
        return self._node_id << ROW_BITS | row_id

    def _row(self, key: int) -> int:
        return key if self._node_id == 0 else key & ((1 << ROW_BITS) - 1)

    def _is_own(self, key: int) -> bool:
        return key >> ROW_BITS == self._node_id

    def foreign_node_in_own_range(self) -> str | None:
        """Another node's name found under this node's keys (two watchers drew the same node id)."""
        if self._node_id == 0 or not self._has_node_field:
            return None
        rows = self._client.query(
            self._collection,
            filter=f"{self._own_filter()} and node != {milvus_string(self._node)}",
            output_fields=["node"],
            limit=1,
            consistency_level="Strong",
        )
        return str(rows[0]["node"]) if rows else None

    def _own_filter(self) -> str:
        """This node's entities only (its reconcile must never touch another watcher's)."""
        if self._node_id == 0:
            return ""
        return f"id >= {self._own[0]} and id < {self._own[1]}"

    def upsert(self, items: Sequence[tuple[int, str, Vector]]) -> None:
        if not items:
            return
        rows: list[dict[str, Any]] = [
            {
                "id": self._key(key),
                "path": stored_path(path),
                "vector": np.asarray(vector, dtype=np.float32).tolist(),
            }
            for key, path, vector in items
        ]
        if self._has_node_field:
            node = self._node.encode()[:NODE_MAX_BYTES].decode("utf-8", "ignore")
            for row in rows:
                row["node"] = node
        with self._write_lock:
            self._client.upsert(self._collection, rows)

    def get_vectors(self, ids: Iterable[int]) -> dict[int, Vector]:
        keys = list(ids)
        if not keys:
            return {}
        # Strong here too, not the collection's default: a collection created by another client may be
        # Bounded, and then a server does not return rows upserted just before (measured on 2.3.5).
        rows = self._client.get(
            self._collection,
            ids=[self._key(key) for key in keys],
            output_fields=["vector"],
            consistency_level="Strong",
        )
        return {self._row(int(row["id"])): np.asarray(row["vector"], dtype=np.float32) for row in rows}

    def present(self, ids: Iterable[int]) -> set[int]:
        """Which of ``ids`` have an entity here (their vectors are not read)."""
        keys = list(ids)
        found: set[int] = set()
        for start in range(0, len(keys), 1000):
            batch = [self._key(key) for key in keys[start : start + 1000]]
            rows = self._client.query(
                self._collection,
                filter=f"id in {batch}",
                output_fields=["id"],
                consistency_level="Strong",  # see get_vectors
            )
            found.update(self._row(int(row["id"])) for row in rows)
        return found

    def ids_for_path(self, path: str) -> list[int]:
        """Keys of entities whose stored path is ``path`` (for repairs when the catalog lost track)."""
        own = self._own_filter()
        rows = self._client.query(
            self._collection,
            filter=f"path == {milvus_string(stored_path(path))}" + (f" and {own}" if own else ""),
            output_fields=["id"],
            consistency_level="Strong",
        )
        return sorted(self._row(int(row["id"])) for row in rows)

    def delete(self, ids: Iterable[int]) -> None:
        keys = list(ids)
        if keys:
            with self._write_lock:
                self._client.delete(self._collection, ids=[self._key(key) for key in keys])

    def search(self, queries: Sequence[Vector], k: int) -> list[list[SearchHit]]:
        if not queries:
            return []
        results = self._client.search(
            self._collection,
            data=[np.asarray(q, dtype=np.float32).tolist() for q in queries],
            limit=k,
            output_fields=["path", "node"] if self._has_node_field else ["path"],
            search_params={"metric_type": METRIC, "params": self._search_params(k)},
            consistency_level="Strong",
        )
        return [[self._hit(hit) for hit in hits] for hits in results]

    def _hit(self, hit: Mapping[str, Any]) -> SearchHit:
        key, score, path = int(hit["id"]), float(hit["distance"]), str(hit["entity"]["path"])
        if self._is_own(key):
            return SearchHit(self._row(key), score, path)
        node = str(hit["entity"].get("node") or f"node {key >> ROW_BITS}")
        return SearchHit(key, score, path, node=node)

    def _search_params(self, k: int) -> dict[str, Any]:
        if self._index_type.startswith("HNSW"):
            return {"ef": max(64, k)}
        if self._index_type.startswith("IVF"):
            # ~3 % of the clusters: recall stays high as auto_index_params grows nlist with the collection.
            nlist = int(self._index_params.get("nlist", 128))
            return {"nprobe": min(nlist, max(16, nlist // 32))}
        return {}

    def count(self) -> int:
        """This node's entities."""
        rows = self._client.query(
            self._collection,
            filter=self._own_filter(),
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"])

    def all_ids(self) -> set[int]:
        """The catalog ids of this node's entities (iterated in batches: a collection can be large)."""
        iterator = self._client.query_iterator(
            self._collection,
            batch_size=4096,
            filter=self._own_filter(),
            output_fields=["id"],
            consistency_level="Strong",  # see get_vectors
        )
        ids: set[int] = set()
        try:
            while batch := iterator.next():
                ids.update(self._row(int(row["id"])) for row in batch)
        finally:
            iterator.close()
        return ids

    def compact(self) -> dict[str, int]:
        """Flush, then ask Milvus to merge segments and drop deleted rows (a no-op where unsupported)."""
        with self._write_lock:
            self._client.flush(self._collection)
            job = self._client.compact(self._collection)
        return {"milvus_compaction_job": int(job or 0)}

    def drop(self) -> None:
        with self._write_lock:
            self._client.drop_collection(self._collection)
            self._ensure_collection()

    def drop_collection(self, name: str) -> None:
        """Drop another collection in the same database (an old one, after a reindex switched away)."""
        if name == self._collection:
            raise ValueError(f"refusing to drop the collection this store serves ({name!r})")
        with self._write_lock:
            if self._client.has_collection(name):
                self._client.drop_collection(name)

    def close(self) -> None:
        self._connection.close()
