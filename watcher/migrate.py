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

A resumed copy also copies again the rows at or below the resume point that changed after the
interrupted run last recorded its progress (the catalog's ``updated_at``): files re-indexed, moved
or renamed meanwhile (by ``imgwatch index``, or a daemon that ran without the copy) would otherwise
keep their old vectors or paths in the target, and the verification only samples.

While a daemon serves, :mod:`imgwatch.daemon.migration` runs the same copy with ``gate`` set to the
serving gate's ``exclusive``: each batch is read and written with no handler in between, and the
verification, the switch of store and ``on_switch`` happen in one exclusive block.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from imgwatch.errors import ImgwatchError
from imgwatch.services.abc import FileState
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
from imgwatch.services.catalog_tables import FILES, db_now

log = logging.getLogger(__name__)

BATCH = 500
#: Vectors compared between the two stores after the copy.
SAMPLE = 64
#: Where ``--to lite`` goes: the data dir's own Milvus Lite file (``Settings.vectors_uri`` then).
LITE = "lite"
#: How far before an interrupted run's last recorded progress the changed rows are copied again:
#: the catalog's clock and this one are the same, the margin only absorbs their resolution.
RESUME_MARGIN = timedelta(seconds=2)


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
    recopied: int
    """Rows at or below ``resumed_after`` copied again: they changed after the interrupted run."""
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
    gate: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    pause: float = 0.0,
    stop: threading.Event | None = None,
    on_switch: Callable[[], None] | None = None,
) -> MigrationResult:
    """Copy every vector the catalog vouches for from ``stores.source`` to ``stores.target``, verify,
    and point the data dir at the target. ``progress(done, total)`` after each batch.

    Each batch is copied inside ``gate()``, and the verification, the record of the new store and
    ``on_switch()`` inside one more: nothing the gate keeps out can write between a batch's read and
    its write, nor between the verification and the switch. ``pause`` seconds pass between batches
    (outside the gate), and a set ``stop`` ends the copy between batches with :class:`MigrationStoppedError`
    (resumable)."""
    if catalog.get_meta(REINDEX_META_KEY):
        raise MigrationError("a reindex is unfinished: let it finish (`imgwatch reindex`) before migrating")
    started = time.monotonic()
    collection = stores.source.collection
    total = sum(len(ids) for ids in catalog.iter_ids_with_vectors(5000))
    after, since = _resume_point(catalog, stores.target_uri, collection)
    copy = _Copy(catalog, stores)
    recopied = 0
    if since is not None:
        for ids in _changed_since(catalog, since, after, batch):
            with gate():
                recopied += copy.batch(ids)
    done = 0
    for ids in catalog.iter_ids_with_vectors(batch):
        if stop is not None and stop.is_set():
            raise MigrationStoppedError(stores.target_uri)
        done += len(ids)
        todo = [i for i in ids if i > after]
        if todo:
            with gate():
                copy.batch(todo)
                _record_progress(catalog, stores.target_uri, collection, max(todo))
            if pause:
                time.sleep(pause)
        if progress is not None:
            progress(done, max(done, total))
    with gate():
        removed, sampled = _verify(catalog, stores, copy.missing)
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
        if on_switch is not None:
            on_switch()
        # Counted here, inside the gate: files added while the copy ran are in the target too.
        wanted = sum(len(ids) for ids in catalog.iter_ids_with_vectors(5000))
    return MigrationResult(
        source=stores.source_uri,
        target=stores.target_uri,
        collection=collection,
        copied=copy.copied,
        total=wanted - len(copy.missing),
        resumed_after=after,
        missing_in_source=copy.missing,
        recopied=recopied,
        removed_from_target=removed,
        verified_sample=sampled,
        seconds=round(time.monotonic() - started, 2),
    )


class MigrationStoppedError(MigrationError):
    """The copy was asked to stop (the daemon is stopping): it resumes when migrate is given again."""

    def __init__(self, target: str) -> None:
        super().__init__(f"the copy to {target} stopped before it finished; run migrate again to resume")


class _Copy:
    """Batches read from the source and upserted into the target, with what they found."""

    def __init__(self, catalog: SQLiteCatalog, stores: Stores) -> None:
        self._catalog = catalog
        self._stores = stores
        self.copied = 0
        self.missing: list[str] = []

    def batch(self, ids: list[int]) -> int:
        """Copy ``ids`` (catalog ids with vectors); returns how many were written."""
        records = self._catalog.get_many(ids)
        vectors = self._stores.source.get_vectors(ids)
        self.missing += [records[i].path for i in ids if i not in vectors and i in records]
        items = [(i, records[i].path, vectors[i]) for i in ids if i in vectors and i in records]
        self._stores.target.upsert(items)
        self.copied += len(items)
        return len(items)


_SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")


def check_target(to: str) -> None:
    """ImgwatchError unless ``to`` is a Milvus server URI or ``lite``."""
    if to != LITE and not to.startswith(_SERVER_SCHEMES):
        raise ImgwatchError(f"--to {to!r}: give a Milvus server URI (http://host:19530) or 'lite'")


def resolve_target(to: str, settings: Any) -> str:
    """The target store's URI for ``--to`` (a server URI, or ``lite``: the data dir's Milvus Lite
    file); ImgwatchError when it is neither, or when the index is there already."""
    check_target(to)
    target = str(settings.data_dir / "vectors.db") if to == LITE else to
    if (to == LITE and settings.uses_milvus_lite) or target == settings.vectors_uri:
        raise ImgwatchError(f"the index is in {settings.vectors_uri} already")
    return str(target)


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


def _resume_point(catalog: SQLiteCatalog, target: str, collection: str) -> tuple[int, datetime | None]:
    """``(last catalog id copied, when that was recorded)``; ``(0, None)`` for a fresh copy."""
    text = catalog.get_meta(MIGRATION_META_KEY)
    if not text:
        return 0, None
    unfinished = json.loads(text)
    if unfinished["to"] != target or unfinished["collection"] != collection:
        log.warning(
            "an unfinished copy to %s (collection %s) is abandoned: copying to %s from the start",
            unfinished["to"],
            unfinished["collection"],
            target,
        )
        return 0, None
    log.info("resuming the copy to %s after catalog id %d", target, unfinished["through"])
    # Recorded by earlier versions without a time: every row up to the resume point is copied again.
    at = unfinished.get("at")
    since = datetime.fromisoformat(at) - RESUME_MARGIN if at else datetime.min
    return int(unfinished["through"]), since


def _record_progress(catalog: SQLiteCatalog, target: str, collection: str, through: int) -> None:
    # "at" in the catalog's own clock (naive UTC, as updated_at): rows updated after it, up to
    # "through", changed after this batch was copied, and a resumed copy copies them again.
    catalog.set_meta(
        MIGRATION_META_KEY,
        json.dumps({"to": target, "collection": collection, "through": through, "at": db_now().isoformat()}),
    )


def _changed_since(catalog: SQLiteCatalog, since: datetime, through: int, batch: int) -> list[list[int]]:
    """Ids at or below ``through`` with vectors whose rows changed at or after ``since``, in batches."""
    query = (
        sa.select(FILES.c.id)
        .where(
            FILES.c.id <= through,
            FILES.c.updated_at >= since,
            FILES.c.has_vector.is_(True),
            FILES.c.state == FileState.INDEXED.value,
        )
        .order_by(FILES.c.id)
    )
    with catalog.engine.connect() as conn:
        ids = list(conn.execute(query).scalars())
    if ids:
        log.info("copying again %d file(s) that changed since the interrupted copy", len(ids))
    return [ids[start : start + batch] for start in range(0, len(ids), batch)]


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
