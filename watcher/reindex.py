"""Shadow reindex: make the index what the settings say, while it keeps answering searches.

A change of model or weights, turning PCA on or off, or an ANN index that no longer suits the size of
the collection, each needs a new Milvus collection. It is built beside the serving one: every catalog
row that vouches for a vector gets one in the new collection (re-extracted from the file, projected
from the stored vector, or copied), tracked in the reindex ledger so a restart resumes where it
stopped, and redone when the file changes meanwhile. Before the switch the new collection is checked
against the ledger (:meth:`~imgwatch.reindex_build.Build.verify`: a retried or resumed build's
collection may have lost what an earlier attempt wrote). Then, with handlers held for a moment, the
last changes are caught up and one catalog transaction switches over; the old collection is dropped.

Parts: the steps (:mod:`imgwatch.reindex_steps`), one build (:mod:`imgwatch.reindex_build`) and the
daemon's background runner (:mod:`imgwatch.reindex_background`); their names are exported from here.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

from imgwatch.context import Context
from imgwatch.errors import ImgwatchError
from imgwatch.reindex_background import BackgroundReindex
from imgwatch.reindex_build import SWITCH_ROUNDS, Build, IncompleteBuildError
from imgwatch.reindex_steps import (
    REBUILD_FACTOR,
    Mode,
    SharedCollectionError,
    Step,
    next_step,
    step_dimension,
    wanted_index,
    wanted_pca,
)
from imgwatch.services.abc import Extractor, ExtractorSignature, Vector
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
from imgwatch.services.model_spec import following_index
from imgwatch.services.pca import PCATransform, ProjectedExtractor

__all__ = [
    "BATCH",
    "REBUILD_FACTOR",
    "SWITCH_WHEN_LEFT",
    "BackgroundReindex",
    "Build",
    "IncompleteBuildError",
    "Mode",
    "Reindexer",
    "SharedCollectionError",
    "Step",
    "next_step",
    "wanted_index",
    "wanted_pca",
]

log = logging.getLogger(__name__)

BATCH = 32
#: Below this many rows left, the switch takes the gate and finishes them with handlers held.
SWITCH_WHEN_LEFT = 8


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
        configured = following_index(self._configured, stored)
        # Alone in its collection, the catalog knows the size: a run with nothing else to do need not
        # open the store (Milvus Lite loads every vector to count them).
        entities = catalog.vector_count() if settings.node is None else self._services.ctx.vectors.count()
        pca = wanted_pca(settings, stored, active, entities)
        wanted = wanted_index(settings, active, entities, dimension=step_dimension(stored, configured, pca))
        return next_step(stored, configured, pca, active, wanted)

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
            build = Build(services, self._ledger, step.mode, store, target_extractor, transform)
            # The ledger is trusted only as far as the collection bears it out (a retried or resumed
            # build's collection may have lost what an earlier attempt wrote): before the switch the
            # collection is checked against it, and what is missing is built again, here, where
            # handlers and searches run on.
            for _ in range(SWITCH_ROUNDS):
                while build.left() >= self._switch_when_left:
                    if stop is not None and stop.is_set():
                        self._progress["phase"] = "paused"
                        return build.done
                    build.sync(self._batch)
                    if self._on_progress is not None:
                        self._on_progress(self.progress() or {})
                if not (missing := build.verify()):
                    break
            else:
                raise IncompleteBuildError(collection, f"{missing} vectors were missing again")
            self._progress["phase"] = "switching"
            old_store = services.ctx.vectors
            with services.serving.exclusive() as held:
                build.complete(held, self._batch * 4)
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
                old = services.serving.current
                services.serving.replace(
                    # The same path locks: a path held across the switch stays held.
                    Context(
                        catalog=catalog,
                        vectors=store,
                        extractor=target_extractor,
                        files=old.files,
                        paths=old.paths,
                    )
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
