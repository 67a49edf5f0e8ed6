"""Shadow reindex: make the index what the settings say, while it keeps answering searches.

A change of model or weights, turning PCA on or off, or an ANN index that no longer suits the size of
the collection, each needs a new Milvus collection. It is built beside the serving one: every catalog
row that vouches for a vector gets one in the new collection (re-extracted from the file, projected
from the stored vector, or copied), tracked in the reindex ledger so a restart resumes where it
stopped, and redone when the file changes meanwhile. Then, with handlers held for a moment, the last
changes are caught up and one catalog transaction switches over; the old collection is dropped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np

from imgwatch.context import Context
from imgwatch.errors import ImageError, ImgwatchError, StoreAuthError
from imgwatch.services.abc import Extractor, ExtractorSignature, FileRecord, Vector
from imgwatch.services.build import (
    COLLECTION_META_KEY,
    GENERATION_META_KEY,
    INDEX_META_KEY,
    REINDEX_META_KEY,
    SIGNATURE_META_KEY,
    WEIGHTS_META_KEY,
    Services,
    active_collection,
    configured_signature,
    open_store,
    pca_directory,
    stored_index,
    stored_signature,
)
from imgwatch.services.ledger import ReindexLedger
from imgwatch.services.pca import PCATransform, ProjectedExtractor

log = logging.getLogger(__name__)

BATCH = 32
#: Below this many rows left, the switch takes the gate and finishes them with handlers held.
SWITCH_WHEN_LEFT = 8
#: An automatically sized ANN index is rebuilt once the ideal parameters are this far off.
REBUILD_FACTOR = 2.0


class SharedCollectionError(ImgwatchError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the index needs rebuilding ({reason}), but its collection is shared with other watchers "
            "(`node` is set): a watcher never replaces a shared collection by itself. See README, "
            '"Scaling out", for changing the extractor of a shared collection.'
        )


class Mode(StrEnum):
    EXTRACT = "extract"
    """Run the (new) model on every file."""
    PROJECT = "project"
    """Apply a newly fitted PCA transform to the stored vectors: no file is read."""
    COPY = "copy"
    """Same vectors, another ANN index."""


@dataclass(frozen=True)
class Step:
    mode: Mode
    reason: str
    signature: ExtractorSignature
    """The target's signature (for :attr:`Mode.PROJECT`, the one being projected from)."""
    index: dict[str, Any]
    pca: int | None = None


def next_step(
    stored: ExtractorSignature,
    configured: ExtractorSignature,
    pca: int | None,
    active_index: dict[str, Any],
    wanted_index: dict[str, Any],
) -> Step | None:
    """The next change that brings an index made by ``stored`` towards the settings, or None.

    Projections are only ever fitted on the model's own vectors, so a change of model or PCA size is
    an extraction first and a projection after.
    """
    if stored.base.key != configured.base.key:
        return Step(Mode.EXTRACT, "the configured model/weights differ", configured.base, wanted_index)
    if stored.pca and (pca is None or pca != stored.dimension):
        reason = "PCA turned off" if pca is None else f"PCA changed from {stored.dimension} to {pca}"
        return Step(Mode.EXTRACT, reason, configured.base, wanted_index)
    if pca is not None and not stored.pca:
        return Step(Mode.PROJECT, f"PCA to {pca} dimensions turned on", stored, wanted_index, pca)
    if wanted_index != active_index:
        return Step(Mode.COPY, f"ANN index {active_index} -> {wanted_index}", stored, wanted_index)
    return None


def wanted_index(services: Services, active: dict[str, Any], entities: int) -> dict[str, Any]:
    """The index the settings ask for. Automatically sized parameters follow the collection's size,
    with hysteresis: they change only when off by :data:`REBUILD_FACTOR` or more."""
    from imgwatch.services.vectors import auto_index_params

    settings = services.settings
    if settings.index_params:
        return {"type": settings.index_type, "params": dict(settings.index_params)}
    ideal = auto_index_params(settings.index_type, entities)
    if active["type"] == settings.index_type and "nlist" in ideal:
        current = int(active["params"].get("nlist", 0)) or 1
        if 1 / REBUILD_FACTOR < ideal["nlist"] / current < REBUILD_FACTOR:
            return active
    if active["type"] == settings.index_type and "nlist" not in ideal:
        return active
    return {"type": settings.index_type, "params": ideal}


class Reindexer:
    """Runs the steps :func:`next_step` names until none is left. One at a time per data dir."""

    def __init__(
        self,
        services: Services,
        *,
        batch: int = BATCH,
        switch_when_left: int = SWITCH_WHEN_LEFT,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._services = services
        self._ledger = ReindexLedger(services.catalog)
        self._batch = batch
        self._switch_when_left = switch_when_left
        self._on_progress = on_progress
        self._progress: dict[str, Any] | None = None
        self._configured: ExtractorSignature | None = None
        self._lock = threading.Lock()

    def pending(self) -> Step | None:
        catalog, settings = self._services.catalog, self._services.settings
        stored = stored_signature(catalog)
        if stored is None:
            return None
        active = stored_index(catalog, settings)
        if self._configured is None:
            # Once per process: for a weights file this hashes ~500 MB.
            self._configured = configured_signature(settings)
        configured = self._configured
        wanted = wanted_index(self._services, active, self._services.ctx.vectors.count())
        return next_step(stored, configured, settings.pca, active, wanted)

    def progress(self) -> dict[str, Any] | None:
        """What the running (or last) reindex is doing, for ``status``."""
        if self._progress is None:
            return None
        report = dict(self._progress)
        if report.get("phase") == "building":
            report.update(self._ledger.progress())
        return report

    def run(self, stop: threading.Event | None = None) -> dict[str, int]:
        """Apply every pending step; returns counts. Raises :class:`NotEnoughSamplesError` when PCA
        must wait for more vectors (the index keeps serving as it is)."""
        if self._services.settings.node is not None and (step := self.pending()) is not None:
            raise SharedCollectionError(step.reason)
        if not self._lock.acquire(blocking=False):
            raise ImgwatchError("a reindex is already running")
        try:
            self._drop_abandoned()
            counts: dict[str, int] = {"steps": 0, "vectors": 0}
            while (step := self.pending()) is not None:
                if stop is not None and stop.is_set():
                    break
                counts["vectors"] += self._apply(step, stop)
                counts["steps"] += 1
            return counts
        finally:
            self._lock.release()

    # ---- one step ----------------------------------------------------------------------------

    def _apply(self, step: Step, stop: threading.Event | None) -> int:
        services, catalog = self._services, self._services.catalog
        started = datetime.now(UTC)
        self._progress = {"phase": "preparing", "mode": step.mode.value, "reason": step.reason}
        log.info("reindex: %s (%s)", step.reason, step.mode.value)
        target_extractor, transform = self._target_extractor(step)
        target = target_extractor.signature
        collection = self._target_collection(target, step.index)
        store = open_store(services.settings, services.catalog, collection, target.dimension, step.index)
        # Every way out but the switch closes it: a failed or paused build is redone (by the retry, or
        # the next start) with a store of its own, so a store left open here would leak one client per
        # retry for the life of the daemon.
        serving = False
        try:
            self._progress = {
                "phase": "building",
                "mode": step.mode.value,
                "reason": step.reason,
                "target": target.key,
                "collection": collection,
                "started_at": started.isoformat(),
            }
            build = _Build(services, self._ledger, step.mode, store, target_extractor, transform)
            while build.left() >= self._switch_when_left:
                if stop is not None and stop.is_set():
                    self._progress["phase"] = "paused"
                    return build.done
                build.sync(self._batch)
                if self._on_progress is not None:
                    self._on_progress(self.progress() or {})
            self._progress["phase"] = "switching"
            old_store = services.ctx.vectors
            with services.serving.exclusive() as held:
                while build.sync(self._batch * 4, held=held):
                    pass
                build.drop_stale()
                generation = int(catalog.get_meta(GENERATION_META_KEY) or 0)
                self._ledger.finish(
                    target.key,
                    {
                        SIGNATURE_META_KEY: target.to_json(),
                        WEIGHTS_META_KEY: self._weights_setting(target),
                        COLLECTION_META_KEY: collection,
                        INDEX_META_KEY: json.dumps(step.index),
                        GENERATION_META_KEY: str(max(generation, _generation_of(collection))),
                        REINDEX_META_KEY: None,
                    },
                )
                files = services.ctx.files
                services.serving.replace(
                    Context(catalog=catalog, vectors=store, extractor=target_extractor, files=files)
                )
                # Serving now: it closes with the other services (or when a later reindex replaces it).
                serving = True
                services.stack.callback(store.close)
            # Nobody can reach the old collection any more: searches and handlers now start on the new one.
            store.drop_collection(old_store.collection)
            old_store.close()
            services.extractors.release_except(target_extractor)
            elapsed = (datetime.now(UTC) - started).total_seconds()
            self._progress = {
                "phase": "done",
                "mode": step.mode.value,
                "reason": step.reason,
                "target": target.key,
                "collection": collection,
                "vectors": build.done,
                "duration_s": round(elapsed, 1),
            }
            log.info("reindex done: %d vectors in %s, %.1f s", build.done, collection, elapsed)
            return build.done
        finally:
            if not serving:
                store.close()

    def _target_extractor(self, step: Step) -> tuple[Extractor, PCATransform | None]:
        services = self._services
        if step.mode is Mode.EXTRACT:
            return services.extractors.base(step.signature, services.settings.weights), None
        if step.mode is Mode.COPY:
            return services.ctx.extractor, None
        assert step.pca is not None
        self._progress = {"phase": "fitting PCA", "mode": step.mode.value, "reason": step.reason}
        resumed = self._resumable_transform(step)
        transform = resumed or PCATransform.fit(self._stored_vectors(), step.pca)
        transform.save(pca_directory(services.settings))
        return ProjectedExtractor(services.ctx.extractor, transform), transform

    def _stored_vectors(self) -> Iterator[Vector]:
        """The serving collection's vectors in batches, paged by catalog ids: Milvus Lite's
        query_iterator loads every remaining vector for each page (measured +80-120 MB per page)."""
        vectors = self._services.ctx.vectors
        for ids in self._services.catalog.iter_ids_with_vectors():
            found = vectors.get_vectors(ids)
            if found:
                yield np.stack(list(found.values()))

    def _resumable_transform(self, step: Step) -> PCATransform | None:
        """The transform of an interrupted projection to the same size, so its progress is kept."""
        text = self._services.catalog.get_meta(REINDEX_META_KEY)
        if not text:
            return None
        target = ExtractorSignature.from_json(json.loads(text)["signature"])
        version = target.pca_version
        if version is None or target.base.key != step.signature.key or target.dimension != step.pca:
            return None
        try:
            return PCATransform.load(pca_directory(self._services.settings), target.dimension, version)
        except ImgwatchError:
            return None

    def _target_collection(self, target: ExtractorSignature, index: dict[str, Any]) -> str:
        """The collection to build into: an interrupted build of the same target is resumed."""
        catalog = self._services.catalog
        text = catalog.get_meta(REINDEX_META_KEY)
        if text:
            previous = json.loads(text)
            if previous["signature_key"] == target.key and previous["index"] == index:
                log.info("reindex: resuming %s", previous["collection"])
                return str(previous["collection"])
            self._abandon(previous["collection"])
        generation = int(catalog.get_meta(GENERATION_META_KEY) or 0) + 1
        name = f"{self._services.settings.collection}_{generation}"
        catalog.set_meta(GENERATION_META_KEY, str(generation))
        catalog.set_meta(
            REINDEX_META_KEY,
            json.dumps(
                {
                    "collection": name,
                    "signature": target.to_json(),
                    "signature_key": target.key,
                    "index": index,
                    "started_at": datetime.now(UTC).isoformat(),
                }
            ),
        )
        return name

    def _abandon(self, collection: str) -> None:
        log.info("reindex: abandoning %s (the settings changed since it started)", collection)
        self._services.ctx.vectors.drop_collection(collection)
        self._ledger.clear()
        self._services.catalog.delete_meta(REINDEX_META_KEY)

    def _drop_abandoned(self) -> None:
        """Collections of ours that nothing refers to: left by a crash between switch and drop."""
        catalog, settings = self._services.catalog, self._services.settings
        keep = {active_collection(catalog, settings)}
        if text := catalog.get_meta(REINDEX_META_KEY):
            keep.add(json.loads(text)["collection"])
        vectors = self._services.ctx.vectors
        prefix = settings.collection
        for name in vectors.collections():
            ours = name == prefix or (name.startswith(prefix + "_") and name[len(prefix) + 1 :].isdigit())
            if ours and name not in keep:
                log.info("dropping collection %s, left over from an earlier reindex", name)
                vectors.drop_collection(name)

    def _weights_setting(self, target: ExtractorSignature) -> str:
        current = stored_signature(self._services.catalog)
        if current is not None and current.base.key == target.base.key:
            return self._services.catalog.get_meta(WEIGHTS_META_KEY) or self._services.settings.weights
        return self._services.settings.weights


def _generation_of(collection: str) -> int:
    suffix = collection.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


class _Build:
    """Fills one new collection from the catalog's rows, in batches, recording each in the ledger."""

    def __init__(
        self,
        services: Services,
        ledger: ReindexLedger,
        mode: Mode,
        store: Any,
        extractor: Extractor,
        transform: PCATransform | None,
    ) -> None:
        self._services = services
        self._ledger = ledger
        self._mode = mode
        self._store = store
        self._extractor = extractor
        self._transform = transform
        self._workers = services.settings.batch_size + 4
        self.done = 0

    def left(self) -> int:
        return self._ledger.remaining()

    def sync(self, limit: int, *, held: Context | None = None) -> int:
        """Give up to ``limit`` rows their new vector; returns how many rows were taken.

        ``held`` is the serving context when the caller holds it exclusively (the switch)."""
        rows = self._ledger.todo(limit)
        if not rows:
            return 0
        vectors: dict[int, Vector] = {}
        if self._mode is not Mode.EXTRACT:
            if held is not None:
                vectors = self._reuse(rows, held)
            else:
                with self._services.serving.use() as serving:
                    vectors = self._reuse(rows, serving)
        missing = [r for r in rows if r.id not in vectors]
        errors: dict[int, str] = {}
        if missing:
            extracted, errors = self._extract(missing)
            vectors.update(extracted)
        self._store.upsert([(r.id, r.path, vectors[r.id]) for r in rows if r.id in vectors])
        self._ledger.record(rows, errors)
        self.drop_stale()
        self.done += len(vectors)
        return len(rows)

    def drop_stale(self) -> None:
        stale = self._ledger.stale()
        if stale:
            self._store.delete(stale)
            self._ledger.forget(stale)

    def _reuse(self, rows: list[FileRecord], serving: Context) -> dict[int, Vector]:
        """The serving collection's vectors of ``rows``, projected when PCA is being turned on."""
        stored = serving.vectors.get_vectors([r.id for r in rows])
        if not stored or self._transform is None:
            return stored
        keys = list(stored)
        projected = self._transform.apply(np.stack([stored[k] for k in keys]))
        return dict(zip(keys, projected, strict=True))

    def _extract(self, rows: list[FileRecord]) -> tuple[dict[int, Vector], dict[int, str]]:
        """Read each file and run the target model; reading overlaps the batched model."""
        files = self._services.ctx.files

        def one(row: FileRecord) -> tuple[int, Vector | None, str | None]:
            try:
                return row.id, self._extractor.embed(files.read(row.path).data), None
            except ImageError as e:
                return row.id, None, e.reason

        vectors: dict[int, Vector] = {}
        errors: dict[int, str] = {}
        with ThreadPoolExecutor(self._workers, thread_name_prefix="imgwatch-reindex") as pool:
            for key, vector, error in pool.map(one, rows):
                if vector is not None:
                    vectors[key] = vector
                else:
                    errors[key] = error or "unreadable"
        return vectors, errors


class BackgroundReindex:
    """Runs a :class:`Reindexer` in a thread of its own whenever a step is pending (checked at start,
    and whenever :meth:`wake` is called: after each maintenance job), and retries after failures.

    A refused Milvus token is not retried: it goes to ``on_fatal`` (the daemon stops) and the thread
    ends."""

    RETRY_S = 300.0

    def __init__(
        self,
        reindexer: Reindexer,
        services: Services,
        *,
        on_fatal: Callable[[StoreAuthError], None] | None = None,
    ) -> None:
        self._reindexer = reindexer
        self._services = services
        self._on_fatal = on_fatal
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._waiting: str | None = None
        # A daemon thread: a reindex stopped half-way resumes from the ledger on the next start.
        self._thread = threading.Thread(target=self._loop, name="imgwatch-reindex", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def status(self) -> dict[str, Any] | None:
        report = self._reindexer.progress()
        if self._waiting is not None:
            report = (report or {}) | {"phase": "waiting", "reason": self._waiting}
        return report

    def _loop(self) -> None:
        from imgwatch.jobs import run_recorded
        from imgwatch.services.pca import NotEnoughSamplesError

        reraise = (NotEnoughSamplesError, SharedCollectionError)
        while not self._stop.is_set():
            self._wake.clear()
            delay: float | None = None
            try:
                if self._reindexer.pending() is not None:
                    self._waiting = None
                    report = run_recorded(
                        "reindex",
                        lambda: self._reindexer.run(self._stop),
                        self._services.ctx,
                        reraise=(*reraise, StoreAuthError),
                    )
                    if report["outcome"] != "ok":
                        delay = self.RETRY_S
            except StoreAuthError as e:
                if self._on_fatal is None:
                    log.error("reindex: %s; not retrying", e)
                else:
                    self._on_fatal(e)
                return
            except reraise as e:
                self._waiting = str(e)
            except Exception:
                log.exception("reindex check failed; retrying in %.0f s", self.RETRY_S)
                delay = self.RETRY_S
            self._wake.wait(delay)
