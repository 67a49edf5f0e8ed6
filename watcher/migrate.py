"""``imgwatch migrate``: the index moved between Milvus Lite and a Milvus server, without re-extraction.

The catalog says which files have vectors; each batch of their ids is read from the store the index
is in and upserted, with the file's path, into the same collection name in the other store. An
upsert by key is idempotent, so a copy killed at any point is resumed from the last batch the
catalog recorded as done (``MIGRATION_META_KEY``), and a batch that was half written is written
again, whole. Then the copy is verified: the target holds exactly the catalog's ids with vectors
(entities of this watcher's node that the catalog does not know, left in the target by an earlier
copy, are deleted), and a sample of vectors reads back equal to the source's. Only then does the data
dir point at the new store (``STORE_META_KEY``, read by :func:`imgwatch.services.build.moved_store`);
the old copy is left as it was, for the user to delete when satisfied.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from imgwatch.errors import ImgwatchError
from imgwatch.services.build import (
    MIGRATION_META_KEY,
    REINDEX_META_KEY,
    STORE_META_KEY,
    active_collection,
    node_identity,
    stored_dimension,
    stored_index,
)
from imgwatch.services.catalog import SQLiteCatalog

log = logging.getLogger(__name__)

BATCH = 500
#: Vectors compared between the two stores after the copy.
SAMPLE = 64
#: Where ``--to lite`` goes: the data dir's own Milvus Lite file (``Settings.vectors_uri`` then).
LITE = "lite"


class MigrationError(ImgwatchError):
    """The copy cannot start, or it did not verify: the data dir still points at the old store."""


@dataclass(frozen=True)
class MigrationResult:
    source: str
    target: str
    collection: str
    copied: int
    """Vectors written by this run (a resumed run does not count what an earlier one wrote)."""
    total: int
    """The catalog's files with vectors: what the target holds now."""
    resumed_after: int
    """The last catalog id an earlier, interrupted run had copied (0: a fresh copy)."""
    missing_in_source: list[str]
    """Files the catalog says have a vector that the source store did not hold (not copied)."""
    removed_from_target: int
    verified_sample: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stores:
    """What :func:`migrate` copies between; the caller opens and closes both."""

    source: Any  # MilvusVectorStore
    source_uri: str
    target: Any  # MilvusVectorStore
    target_uri: str


def migrate(
    catalog: SQLiteCatalog,
    stores: Stores,
    *,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> MigrationResult:
    """Copy every vector the catalog vouches for from ``stores.source`` to ``stores.target``, verify,
    and point the data dir at the target. ``progress(done, total)`` after each batch."""
    if catalog.get_meta(REINDEX_META_KEY):
        raise MigrationError("a reindex is unfinished: let it finish (`imgwatch reindex`) before migrating")
    started = time.monotonic()
    collection = stores.source.collection
    total = sum(len(ids) for ids in catalog.iter_ids_with_vectors(5000))
    after = _resume_point(catalog, stores.target_uri, collection)
    copied, done, missing = 0, 0, []
    for ids in catalog.iter_ids_with_vectors(batch):
        done += len(ids)
        todo = [i for i in ids if i > after]
        if todo:
            records = catalog.get_many(todo)
            vectors = stores.source.get_vectors(todo)
            missing += [records[i].path for i in todo if i not in vectors and i in records]
            items = [(i, records[i].path, vectors[i]) for i in todo if i in vectors and i in records]
            stores.target.upsert(items)
            copied += len(items)
            _record_progress(catalog, stores.target_uri, collection, max(todo))
        if progress is not None:
            progress(done, total)
    removed, sampled = _verify(catalog, stores, missing)
    catalog.set_meta(
        STORE_META_KEY,
        json.dumps(
            {
                "uri": None if stores.target_uri == LITE else stores.target_uri,
                "collection": collection,
                "moved_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "from": stores.source_uri,
            }
        ),
    )
    catalog.delete_meta(MIGRATION_META_KEY)
    return MigrationResult(
        source=stores.source_uri,
        target=stores.target_uri,
        collection=collection,
        copied=copied,
        total=total - len(missing),
        resumed_after=after,
        missing_in_source=missing,
        removed_from_target=removed,
        verified_sample=sampled,
        seconds=round(time.monotonic() - started, 2),
    )


def target_store_args(catalog: SQLiteCatalog, settings: Any) -> dict[str, Any]:
    """The keyword arguments of the target's ``MilvusVectorStore``: the index's own dimension,
    collection name, ANN index and node, so that the copy serves exactly as the original."""
    index = stored_index(catalog, settings)
    node_id, node = node_identity(catalog, settings)
    return {
        "dimension": stored_dimension(catalog),
        "collection": active_collection(catalog, settings),
        "index_type": index["type"],
        "index_params": index["params"],
        "node_id": node_id,
        "node": node,
    }


def _resume_point(catalog: SQLiteCatalog, target: str, collection: str) -> int:
    text = catalog.get_meta(MIGRATION_META_KEY)
    if not text:
        return 0
    unfinished = json.loads(text)
    if unfinished["to"] != target or unfinished["collection"] != collection:
        log.warning(
            "an unfinished copy to %s (collection %s) is abandoned: copying to %s from the start",
            unfinished["to"],
            unfinished["collection"],
            target,
        )
        return 0
    log.info("resuming the copy to %s after catalog id %d", target, unfinished["through"])
    return int(unfinished["through"])


def _record_progress(catalog: SQLiteCatalog, target: str, collection: str, through: int) -> None:
    catalog.set_meta(
        MIGRATION_META_KEY, json.dumps({"to": target, "collection": collection, "through": through})
    )


def _verify(catalog: SQLiteCatalog, stores: Stores, missing: list[str]) -> tuple[int, int]:
    """``(entities removed from the target, vectors compared)``; MigrationError if they differ."""
    expected = {i for ids in catalog.iter_ids_with_vectors(5000) for i in ids}
    present = stores.target.all_ids()
    stale = sorted(present - expected)
    if stale:
        # Left by an earlier copy to this store (files deleted since): the target must hold what
        # the catalog says, nothing more.
        stores.target.delete(stale)
    absent = len(expected - present) - len(missing)
    if absent > 0:
        raise MigrationError(f"{absent} vectors are missing from {stores.target_uri} after the copy")
    count, wanted = stores.target.count(), len(expected) - len(missing)
    if count != wanted:
        raise MigrationError(f"{stores.target_uri} holds {count} vectors of this index, the catalog {wanted}")
    both = sorted(expected & present)
    sample = random.Random(len(both)).sample(both, min(SAMPLE, len(both)))  # noqa: S311 - a sample, not a secret
    source, target = stores.source.get_vectors(sample), stores.target.get_vectors(sample)
    for key in sample:
        if key in source and _rounded(source[key]) != _rounded(target.get(key, [])):
            raise MigrationError(f"catalog id {key}: its vector in {stores.target_uri} is not the source's")
    return len(stale), len(sample)


def _rounded(vector: Any) -> list[float]:
    # Both stores keep float32; rounding only absorbs how each client hands the floats back.
    return [round(float(x), 6) for x in vector]
