"""One reindex build: fills a new collection from the catalog's rows, and checks it before a switch.

The ledger (:mod:`imgwatch.services.ledger`) records each row as its vector is written, so a build
that stopped resumes where it was. A ledger entry is the build's word, not a fact about Milvus: the
collection can lose what it was given (a failed attempt whose collection went from under it, a Milvus
that did not keep its writes), and then a retry that trusts the ledger would switch to a collection
with vectors missing. :meth:`Build.verify` compares the ledger with the collection itself; the switch
only happens once they agree.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from imgwatch.context import Context
from imgwatch.errors import ImageError, ImgwatchError
from imgwatch.reindex_steps import Mode
from imgwatch.services.abc import Extractor, FileRecord, Vector
from imgwatch.services.build import Services
from imgwatch.services.ledger import ReindexLedger
from imgwatch.services.ledger_claims import LedgerClaims
from imgwatch.services.pca import PCATransform

# The reindex's log lines keep the one name they always had, whichever module writes them.
log = logging.getLogger("imgwatch.reindex")

#: Rounds of "build what is missing, check again" before a build refuses to switch.
SWITCH_ROUNDS = 3


class IncompleteBuildError(ImgwatchError):
    def __init__(self, collection: str, detail: str) -> None:
        super().__init__(
            f"reindex: {collection!r} does not hold what its ledger records ({detail}) after "
            f"{SWITCH_ROUNDS} rounds of building the difference again; not switching to it (the build "
            "is retried later)"
        )


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
        self._claims = LedgerClaims(services.catalog)
        self._mode = mode
        self._store = store
        self._extractor = extractor
        self._transform = transform
        self._workers = services.settings.workers
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
        # A row done before and redone (its file changed) without success keeps no vector here: the
        # collection holds exactly the ledger's entries made without an error.
        self._store.delete(sorted(errors))
        self._ledger.record(rows, errors)
        self.drop_stale()
        self.done += len(vectors)
        return len(rows)

    def drop_stale(self) -> None:
        stale = self._ledger.stale()
        if stale:
            self._store.delete(stale)
            self._ledger.forget(stale)

    def verify(self) -> int:
        """Make the ledger true of the collection: rows it claims whose vector the collection lacks are
        to do again, entities it does not claim are deleted. Returns how many vectors were missing.

        Reads every claimed id from Milvus (about 35 µs each on Milvus Lite): done where handlers
        run on, not with them held. Only the build writes the new collection and the ledger, so
        nothing changes them meanwhile."""
        claimed = 0
        missing: list[int] = []
        for ids in self._claims.batches():
            claimed += len(ids)
            present = self._store.present(ids)
            missing.extend(key for key in ids if key not in present)
        if missing:
            log.warning(
                "reindex: %d of the %d vectors the ledger records are not in %s; building them again",
                len(missing),
                claimed,
                self._store.collection,
            )
            self._ledger.forget(missing)
        if self._store.count() != claimed - len(missing):
            wanted = {key for ids in self._claims.batches() for key in ids}
            unclaimed = sorted(self._store.all_ids() - wanted)
            log.warning(
                "reindex: deleting %d entities of %s no row vouches for",
                len(unclaimed),
                self._store.collection,
            )
            self._store.delete(unclaimed)
        return len(missing)

    def complete(self, held: Context, batch: int) -> None:
        """With handlers held (``held``): catch up the last changes, ``batch`` rows at a time, and check
        that the collection holds what the ledger claims. A count tells (one query); only when it
        differs are the ids compared and the difference rebuilt. Raises :class:`IncompleteBuildError`
        when they keep differing."""
        claimed = holds = 0
        for _ in range(SWITCH_ROUNDS):
            while self.sync(batch, held=held):
                pass
            self.drop_stale()
            claimed, holds = self._claims.count(), self._store.count()
            if claimed == holds:
                return
            self.verify()
        raise IncompleteBuildError(self._store.collection, f"{claimed} recorded, {holds} held")

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
