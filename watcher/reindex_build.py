"""One reindex build: fills a new collection from the catalog's rows, recording each in the ledger
(:mod:`imgwatch.services.ledger`), so a build that stopped resumes where it was."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from imgwatch.context import Context
from imgwatch.errors import ImageError
from imgwatch.reindex_steps import Mode
from imgwatch.services.abc import Extractor, FileRecord, Vector
from imgwatch.services.build import Services
from imgwatch.services.ledger import ReindexLedger
from imgwatch.services.pca import PCATransform


class Build:
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
