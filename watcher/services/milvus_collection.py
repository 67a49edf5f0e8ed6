"""One Milvus collection's lifecycle: its schema, its ANN index, creating, loading, compacting and
dropping it. Reads and writes of its entities are :class:`~imgwatch.services.vectors.MilvusVectorStore`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from imgwatch.errors import ImgwatchError
from imgwatch.services.milvus_connection import MilvusConnection, note_write, writes_to

# The store's log lines keep the one name they always had, whichever of its modules writes them.
log = logging.getLogger("imgwatch.services.vectors")

METRIC = "IP"  # vectors are L2-normalised, so inner product is cosine similarity
PATH_MAX_BYTES = 65535
NODE_MAX_BYTES = 255
_DEFAULT_INDEX_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "HNSW_SQ": {"M": 16, "efConstruction": 200, "sq_type": "SQ8"},
    "IVF_FLAT": {"nlist": 128},
    "IVF_SQ8": {"nlist": 128},
}


#: ``index_type = auto``'s ANN index, once a collection outgrows exact search. IVF_FLAT, not HNSW:
#: measured in Milvus Lite (benchmarks/index_types.py), HNSW (M 16) found a near copy's original
#: first for only 0.39-0.91 of the queries, and no search ef up to 256 brought that back; IVF_FLAT
#: kept it at 1.0 and recall@10 at 0.995 or more, 3.6-10x faster than FLAT at 4096-d.
AUTO = "AUTO"
AUTO_ANN = "IVF_FLAT"


def auto_index_type(entities: int, active_type: str, exact_up_to: int, factor: float) -> str:
    """``index_type = auto``'s choice for ``entities`` vectors: exact FLAT search up to ``exact_up_to``,
    then :data:`AUTO_ANN`. Back to FLAT only below ``exact_up_to / factor``: a collection that hovers
    around the bar must not be rebuilt back and forth."""
    if active_type in ("FLAT", AUTO):
        return "FLAT" if entities <= exact_up_to else AUTO_ANN
    return "FLAT" if entities < exact_up_to / factor else AUTO_ANN


#: A Milvus server builds an ANN index per sealed segment, not per collection, and a segment holds at
#: most ``dataCoord.segment.maxSize`` (512 MB in Milvus 2.3, the suite's server; 1,024 MB from 2.4):
#: the smaller default, so a newer server's segments get at most sqrt(2) too few clusters.
SERVER_SEGMENT_BYTES = 512 * 2**20
#: Bytes a row takes besides its vector (id, path, node), about as Milvus estimates its VARCHARs.
_ROW_BYTES_BESIDES_VECTOR = 256


def server_segment_rows(dimension: int) -> int:
    """About how many ``dimension``-d rows fill a Milvus server's segment (233,000 at 512-d)."""
    return SERVER_SEGMENT_BYTES // (4 * dimension + _ROW_BYTES_BESIDES_VECTOR)


def auto_index_params(index_type: str, entities: int, *, segment_rows: int | None = None) -> dict[str, Any]:
    """Index parameters suited to a collection of ``entities`` vectors, trained per segment of at most
    ``segment_rows`` rows where the engine does that (a server: :func:`server_segment_rows`).

    IVF indexes want about 4 * sqrt(N) clusters (Milvus' own guidance) for the N vectors one index is
    trained on; a fixed nlist is either too coarse for a big collection (slow scans) or too fine for a
    small one (empty clusters, lost recall). Sized for a whole collection of 1,000,000 on a server, each
    of its ~250,000-row segments would train 4,000 clusters, twice its guidance and twice the build.
    """
    params = dict(_DEFAULT_INDEX_PARAMS.get(index_type, {}))
    if index_type.startswith("IVF"):
        trained = entities if segment_rows is None else min(entities, segment_rows)
        params["nlist"] = int(min(65536, max(16, round(4 * trained**0.5))))
    return params


def default_index_spec(index_type: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The index a collection made by ``index_type`` got when it was new (``auto``: FLAT)."""
    if index_type == AUTO:
        return {"type": "FLAT", "params": {}}
    return {"type": index_type, "params": dict(params or _DEFAULT_INDEX_PARAMS.get(index_type, {}))}


class MilvusCollection:
    """A collection of ``(id INT64, path VARCHAR, vector FLOAT_VECTOR, node VARCHAR)`` entities, made
    with its ANN index if it does not exist, and loaded if it does."""

    def __init__(
        self,
        uri: str,
        *,
        dimension: int,
        collection: str,
        token: str | None,
        index_type: str,
        index_params: Mapping[str, Any] | None,
    ) -> None:
        self._has_node_field = True
        if index_type == AUTO:  # a new collection is small: exact search until a reindex moves it
            index_type, index_params = "FLAT", {}
        self._collection = collection
        self._dimension = dimension
        self._index_type = index_type
        self._index_params = dict(index_params or _DEFAULT_INDEX_PARAMS.get(index_type, {}))
        self._uri = uri
        self._counted: tuple[int, float, int] | None = None
        """``(writes seen, when, count)`` of the last count, on Milvus Lite."""
        self._generation = 0
        """Deletes and drops through this store so far."""
        self._caught_up_at = -1
        """The :attr:`_generation` up to which a Session read sees every write (see :meth:`_read`)."""
        self._level_lock = threading.Lock()
        self._connection = MilvusConnection(uri, token)
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

    @property
    def _lite(self) -> bool:
        return not self._uri.startswith(("http://", "https://", "tcp://", "unix:"))

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
        # pymilvus sends the parameters as separate keys, which a Milvus server reads; Milvus Lite reads
        # only a JSON "params" key, and without it built every IVF index with 128 lists and HNSW with
        # its defaults. Both forms, then.
        params = {**self._index_params, "params": dict(self._index_params)} if self._index_params else {}
        index.add_index(field_name="vector", index_type=self._index_type, metric_type=METRIC, params=params)
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

    def _search_params(self, k: int) -> dict[str, Any]:
        if self._index_type.startswith("HNSW"):
            return {"ef": max(64, k)}
        if self._index_type.startswith("IVF"):
            # ~3 % of the clusters: recall stays high as auto_index_params grows nlist with the collection.
            nlist = int(self._index_params.get("nlist", 128))
            return {"nprobe": min(nlist, max(16, nlist // 32))}
        return {}

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
            self._wrote(seen_at_session=False)

    def _wrote(self, *, seen_at_session: bool = True) -> None:
        """After each write (under the write lock): counts taken before it are stale.

        After an upsert a Session read sees it, and everything before it. Not so after a delete or a
        drop (``seen_at_session=False``): pymilvus kept the last upsert's timestamp for Session reads
        across a ``MilvusClient.delete`` (measured with pymilvus 3.0.2 on Milvus 2.3.5: a Session get
        right after a delete returned the deleted row 10 times in 10), so the next read is Strong."""
        with self._level_lock:
            if seen_at_session:
                self._caught_up_at = self._generation
            else:
                self._generation += 1
        note_write(self._uri, self._collection)

    def _read(self, call: Callable[..., Any], *args: Any, marks: bool = True, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` at Strong consistency until this store has upserted or finished a
        Strong read that ``marks`` with no delete meanwhile (and again after a delete), else Session.

        A Milvus server answers a Strong read only once its clock has ticked past the request (the
        proxy's ``timeTickInterval``, 200 ms by default): at 100,000 PCA-512 vectors on Milvus 2.3.5 a
        search took 185 ms at Strong against 12 ms at Session (benchmarks/results/million.md).
        Session waits only for this process's own last write to the collection, so the daemon still
        finds what it has just stored, and the first read, Strong, sees every process's writes up to
        then (``imgwatch index`` and then ``imgwatch search``). Writes by other processes after that
        (other watchers sharing a collection) show within about one tick. Milvus Lite, one process per
        file, answers either at once.
        """
        with self._level_lock:
            generation = self._generation
            level = "Session" if self._caught_up_at == generation else "Strong"
        result = call(*args, consistency_level=level, **kwargs)
        if level == "Strong" and marks:
            with self._level_lock:
                self._caught_up_at = max(self._caught_up_at, generation)
        return result

    def _count_reused(self, count: Callable[[], int], max_age: float) -> int:
        """``count()``, or on Milvus Lite the last count while nothing was written since (or while it
        is younger than ``max_age`` seconds)."""
        if not self._lite:
            return count()
        writes = writes_to(self._uri, self._collection)
        last = self._counted
        if last is not None and (last[0] == writes or time.monotonic() - last[1] < max_age):
            return last[2]
        # The writes are read before counting: one that lands meanwhile makes the next call count again.
        value = count()
        self._counted = (writes, time.monotonic(), value)
        return value

    def drop_collection(self, name: str) -> None:
        """Drop another collection in the same database (an old one, after a reindex switched away)."""
        if name == self._collection:
            raise ValueError(f"refusing to drop the collection this store serves ({name!r})")
        with self._write_lock:
            if self._client.has_collection(name):
                self._client.drop_collection(name)
                note_write(self._uri, name)

    def close(self) -> None:
        self._connection.close()
