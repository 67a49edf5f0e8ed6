"""The vector store: a Milvus collection (Milvus Lite file by default, or a server by URI).

Entities are ``(id INT64, path VARCHAR, vector FLOAT_VECTOR)``. Integer keys, not path keys: pymilvus
mangles VARCHAR primary keys containing ``'`` or ``\\`` in ``get``/``delete(ids)``, and an integer
survives renames. The path is kept as a scalar so a plain Milvus client can read results too.

This module reads and writes entities; the collection itself (schema, ANN index, compaction, drops)
is :mod:`imgwatch.services.milvus_collection`'s, and the clients of a Milvus are
:mod:`imgwatch.services.milvus_connection`'s. Their public names are exported from here as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from imgwatch.services.abc import SearchHit, Vector
from imgwatch.services.group_commit import GroupCommit, GroupCommitStats
from imgwatch.services.milvus_collection import (
    AUTO,
    METRIC,
    NODE_MAX_BYTES,
    PATH_MAX_BYTES,
    MilvusCollection,
    auto_index_params,
    auto_index_type,
    default_index_spec,
    server_segment_rows,
)
from imgwatch.services.milvus_connection import (
    MilvusConnection,
    auth_failure,
    drop_collections,
    open_connections,
)

__all__ = [
    "AUTO",
    "MAX_NODE_ID",
    "METRIC",
    "NODE_MAX_BYTES",
    "PATH_MAX_BYTES",
    "ROW_BITS",
    "MilvusCollection",
    "MilvusConnection",
    "MilvusVectorStore",
    "auth_failure",
    "auto_index_params",
    "auto_index_type",
    "default_index_spec",
    "drop_collections",
    "milvus_string",
    "open_connections",
    "server_segment_rows",
    "stored_path",
]

#: Milvus keys are ``node_id << ROW_BITS | catalog row id``: several watchers, each with its own
#: catalog, can share one collection without colliding (2^40 rows per node, 2^23 nodes).
ROW_BITS = 40
MAX_NODE_ID = 2**23 - 1
#: Most entities per upsert when concurrent upserts are combined: 256 4096-d vectors are 4 MiB, well
#: inside a server's message limit.
UPSERT_BATCH = 256


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


class MilvusVectorStore(MilvusCollection):
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
        super().__init__(
            uri,
            dimension=dimension,
            collection=collection,
            token=token,
            index_type=index_type,
            index_params=index_params,
        )
        # Each handler stores its file's vector itself; those that do so at the same time share one
        # call (gRPC round trip, Milvus Lite's per-call work) instead of queueing on the write lock.
        self._upserts: GroupCommit[dict[str, Any]] = GroupCommit(self._upsert_rows, limit=UPSERT_BATCH)

    @property
    def upsert_stats(self) -> GroupCommitStats:
        """How concurrent upserts were combined into store calls."""
        return self._upserts.stats

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
        rows = self._read(
            self._client.query,
            self._collection,
            filter=f"{self._own_filter()} and node != {milvus_string(self._node)}",
            output_fields=["node"],
            limit=1,
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
        self._upserts.write(rows)

    def _upsert_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        # Callers combined into one call may name one key twice: the later write wins, as it would
        # have one call after the other (a server may refuse a batch with a key twice).
        latest = list({row["id"]: row for row in rows}.values())
        with self._write_lock:
            self._client.upsert(self._collection, latest)
            self._wrote()

    def rename(self, items: Sequence[tuple[int, str]]) -> None:
        """Give existing entities new paths, keeping their vectors (files moved): ``(key, path)`` pairs.

        Milvus Lite takes a partial upsert (the path alone), a quarter of the time of writing each
        4096-d vector back (measured: 256 entities in 0.43 s against 1.72 s on 2 cores), since it
        checks every element of every vector it receives in Python. A Milvus server before 2.6 has no
        partial update: the vectors are read and written back. Raises, writing nothing, if an entity is
        missing (Milvus Lite refuses the whole batch: a new entity would have no vector).

        Alone in a collection (no ``node``), nothing is written: results take this watcher's paths from
        its catalog, so an entity's copy of its path is read only by other watchers sharing the
        collection, and there are none. A moved file then costs the store nothing (Milvus Lite spent
        ~1.3 ms per renamed entity validating the merged record in Python: moves ran at ~600 files/s).
        The copy is as of the file's last extraction; a migration or a reindex writes the catalog's."""
        if not items or self._node_id == 0:
            return
        if not self._lite:
            vectors = self.get_vectors(key for key, _ in items)
            self.upsert([(key, path, vectors[key]) for key, path in items])
            return
        rows: list[dict[str, Any]] = [
            {"id": self._key(key), "path": stored_path(path)} for key, path in items
        ]
        with self._write_lock:
            self._client.upsert(self._collection, rows, partial_update=True)
            self._wrote()

    def get_vectors(self, ids: Iterable[int]) -> dict[int, Vector]:
        keys = list(ids)
        if not keys:
            return {}
        # Never the collection's default: a collection created by another client may be Bounded, and
        # then a server does not return rows upserted just before (measured on 2.3.5).
        rows = self._read(
            self._client.get,
            self._collection,
            ids=[self._key(key) for key in keys],
            output_fields=["vector"],
        )
        return {self._row(int(row["id"])): np.asarray(row["vector"], dtype=np.float32) for row in rows}

    def present(self, ids: Iterable[int]) -> set[int]:
        """Which of ``ids`` have an entity here (their vectors are not read)."""
        keys = list(ids)
        found: set[int] = set()
        for start in range(0, len(keys), 1000):
            batch = [self._key(key) for key in keys[start : start + 1000]]
            rows = self._read(
                self._client.query,
                self._collection,
                filter=f"id in {batch}",
                output_fields=["id"],
            )
            found.update(self._row(int(row["id"])) for row in rows)
        return found

    def movable(self, ids: Iterable[int]) -> set[int]:
        """Which of ``ids`` a move can carry to a new path: those with an entity here."""
        return self.present(ids)

    def ids_for_path(self, path: str) -> list[int]:
        """Keys of entities whose stored path is ``path`` (for repairs when the catalog lost track)."""
        own = self._own_filter()
        rows = self._read(
            self._client.query,
            self._collection,
            filter=f"path == {milvus_string(stored_path(path))}" + (f" and {own}" if own else ""),
            output_fields=["id"],
        )
        return sorted(self._row(int(row["id"])) for row in rows)

    def delete(self, ids: Iterable[int]) -> None:
        keys = list(ids)
        if keys:
            with self._write_lock:
                self._client.delete(self._collection, ids=[self._key(key) for key in keys])
                self._wrote(seen_at_session=False)

    def search(self, queries: Sequence[Vector], k: int) -> list[list[SearchHit]]:
        if not queries:
            return []
        results = self._read(
            self._client.search,
            self._collection,
            data=[np.asarray(q, dtype=np.float32).tolist() for q in queries],
            limit=k,
            output_fields=["path", "node"] if self._has_node_field else ["path"],
            search_params={"metric_type": METRIC, "params": self._search_params(k)},
        )
        return [[self._hit(hit) for hit in hits] for hits in results]

    def _hit(self, hit: Mapping[str, Any]) -> SearchHit:
        key, score, path = int(hit["id"]), float(hit["distance"]), str(hit["entity"]["path"])
        if self._is_own(key):
            return SearchHit(self._row(key), score, path)
        node = str(hit["entity"].get("node") or f"node {key >> ROW_BITS}")
        return SearchHit(key, score, path, node=node)

    def count(self, max_age: float = 0.0) -> int:
        """This node's entities. On Milvus Lite, counted again only after a write (or, with
        ``max_age``, at most that often while writes go on: a busy daemon's ``status``)."""
        return self._count_reused(self._count, max_age)

    def _count(self) -> int:
        rows = self._read(
            self._client.query,
            self._collection,
            filter=self._own_filter(),
            output_fields=["count(*)"],
        )
        return int(rows[0]["count(*)"])

    def all_ids(self) -> set[int]:
        """The catalog ids of this node's entities (iterated in batches: a collection can be large)."""
        iterator = self._read(
            self._client.query_iterator,
            self._collection,
            batch_size=4096,
            filter=self._own_filter(),
            output_fields=["id"],
            marks=False,  # pymilvus's iterator takes its own timestamp: no Strong read to count
        )
        ids: set[int] = set()
        try:
            while batch := iterator.next():
                ids.update(self._row(int(row["id"])) for row in batch)
        finally:
            iterator.close()
        return ids
