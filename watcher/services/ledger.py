"""The reindex ledger: which catalog rows already have a vector in the collection being built.

A row is *to do* while it vouches for a vector (indexed) and the ledger has no entry for it, or an
entry made for other content or another path: a file that changes or moves while the reindex runs is
done again. The switch to the new collection (:meth:`ReindexLedger.finish`) is one SQLite
transaction: the catalog's signature, collection name and rows change together or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from imgwatch.services.abc import FileRecord, FileState
from imgwatch.services.catalog import FILES, LEDGER, META, SQLiteCatalog, row_to_record

_VOUCHED = sa.and_(FILES.c.state == FileState.INDEXED.value, FILES.c.has_vector.is_(True))
_JOINED = FILES.outerjoin(LEDGER, LEDGER.c.file_id == FILES.c.id)
_TODO = sa.and_(
    _VOUCHED,
    sa.or_(
        LEDGER.c.file_id.is_(None),
        LEDGER.c.content_hash.is_not(FILES.c.content_hash),
        LEDGER.c.path != FILES.c.path,
    ),
)


class ReindexLedger:
    def __init__(self, catalog: SQLiteCatalog) -> None:
        self._engine = catalog.engine

    def todo(self, limit: int) -> list[FileRecord]:
        """Rows still needing a vector in the new collection, oldest id first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(FILES).select_from(_JOINED).where(_TODO).order_by(FILES.c.id).limit(limit)
            )
            return [row_to_record(row) for row in rows]

    def record(self, done: Iterable[FileRecord], errors: Mapping[int, str] | None = None) -> None:
        """``done`` rows now have their vector in the new collection (or, for ids in ``errors``, could
        not get one). The content hash and path recorded are the row's as read by :meth:`todo`."""
        errors = errors or {}
        rows = [
            {
                "file_id": r.id,
                "content_hash": r.content_hash,
                "path": os.fsencode(r.path),
                "error": errors.get(r.id),
            }
            for r in done
        ]
        if not rows:
            return
        statement = sqlite_insert(LEDGER)
        statement = statement.on_conflict_do_update(
            index_elements=[LEDGER.c.file_id],
            set_={c: statement.excluded[c] for c in ("content_hash", "path", "error")},
        )
        with self._engine.begin() as conn:
            conn.execute(statement, rows)

    def stale(self) -> list[int]:
        """Ledger entries whose row was deleted or no longer vouches for a vector: their entities in
        the new collection must go."""
        with self._engine.connect() as conn:
            vouched = sa.select(FILES.c.id).where(_VOUCHED)
            query = sa.select(LEDGER.c.file_id).where(LEDGER.c.file_id.not_in(vouched))
            return [int(key) for key in conn.execute(query).scalars()]

    def forget(self, ids: Iterable[int]) -> None:
        keys = list(ids)
        with self._engine.begin() as conn:
            for start in range(0, len(keys), 500):
                conn.execute(sa.delete(LEDGER).where(LEDGER.c.file_id.in_(keys[start : start + 500])))

    def clear(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(LEDGER))

    def remaining(self) -> int:
        """Rows still to do (one query: the build checks this after every batch)."""
        with self._engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(_JOINED).where(_TODO)).scalar_one()
            )

    def progress(self) -> dict[str, int]:
        todo = self.remaining()
        with self._engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(FILES).where(_VOUCHED)).scalar_one()
            failed = conn.execute(
                sa.select(sa.func.count()).select_from(LEDGER).where(LEDGER.c.error.is_not(None))
            ).scalar_one()
        return {"total": int(total), "done": int(total) - int(todo), "failed": int(failed)}

    def finish(self, signature: str, meta: Mapping[str, str | None]) -> None:
        """Switch the catalog over to the new collection, atomically.

        Rows with a vector there take the new ``signature``; rows that could not get one become failed
        (retried like any failed file); ``meta`` entries are set (``None`` deletes); the ledger empties.
        """
        made = sa.select(LEDGER.c.file_id).where(LEDGER.c.error.is_(None))
        error_of = sa.select(LEDGER.c.error).where(LEDGER.c.file_id == FILES.c.id).scalar_subquery()
        with self._engine.begin() as conn:
            conn.execute(sa.update(FILES).where(_VOUCHED, FILES.c.id.in_(made)).values(signature=signature))
            conn.execute(
                sa.update(FILES)
                .where(
                    _VOUCHED, FILES.c.id.in_(sa.select(LEDGER.c.file_id).where(LEDGER.c.error.is_not(None)))
                )
                .values(
                    state=FileState.FAILED.value,
                    has_vector=False,
                    signature=None,
                    error=sa.literal("not re-extracted during reindex: ") + error_of,
                )
            )
            for key, value in meta.items():
                if value is None:
                    conn.execute(sa.delete(META).where(META.c.key == key))
                else:
                    conn.execute(
                        sqlite_insert(META)
                        .values(key=key, value=value)
                        .on_conflict_do_update(index_elements=[META.c.key], set_={"value": value})
                    )
            conn.execute(sa.delete(LEDGER))
