"""The catalog: what the index knows about each file, in SQLite through SQLAlchemy 2.x.

The schema belongs to the Alembic migrations in ``migrations/``; :func:`open_catalog` applies them.
Paths are stored as their exact bytes (``os.fsencode``), so names that are not valid UTF-8 survive.
:class:`SQLiteCatalog` holds the files and the meta table here; the journal, the job runs and the
roots are parts of it of their own (``catalog_journal``, ``catalog_job_runs``, ``catalog_roots``), and
the table mirrors live in ``catalog_tables`` (exported from here as well). Exact duplicates and the
user's verdicts are in ``catalog_verdicts``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from imgwatch.services.abc import FileBlob, FileRecord, FileState
from imgwatch.services.catalog_job_runs import CatalogJobRuns
from imgwatch.services.catalog_journal import CatalogJournal
from imgwatch.services.catalog_roots import CatalogRoots
from imgwatch.services.catalog_schema import schema_is_current
from imgwatch.services.catalog_tables import (
    FILES,
    JOB_RUNS,
    JOURNAL,
    LEDGER,
    META,
    RECORD_COLUMNS,
    ROOTS,
    VERDICTS,
    Base,
    FileRow,
    JobRunRow,
    JournalRow,
    MetaRow,
    ReindexRow,
    RootRow,
    VerdictRow,
    db_now,
    records,
    row_to_record,
)
from imgwatch.services.catalog_verdicts import CatalogVerdicts
from imgwatch.services.group_commit import GroupCommit, GroupCommitStats

__all__ = [
    "BUSY_TIMEOUT_MS",
    "FILES",
    "JOB_RUNS",
    "JOURNAL",
    "LEDGER",
    "META",
    "ROOTS",
    "VERDICTS",
    "Base",
    "FileRow",
    "JobRunRow",
    "JournalRow",
    "MetaRow",
    "ReindexRow",
    "RootRow",
    "SQLiteCatalog",
    "VerdictRow",
    "create_sqlite_engine",
    "open_catalog",
    "row_to_record",
]

BUSY_TIMEOUT_MS = 30_000


def _under_clause(root: str) -> sa.ColumnElement[bool]:
    prefix = os.fsencode(root.rstrip("/"))
    if not prefix:
        return sa.true()
    # Byte order: everything below "prefix/" sorts between "prefix/" and "prefix0" ('0' follows '/').
    below = sa.and_(FILES.c.path >= prefix + b"/", FILES.c.path < prefix + b"0")
    return sa.or_(FILES.c.path == prefix, below)


def create_sqlite_engine(path: Path) -> Engine:
    # A URL object, not an f-string: in "sqlite:///<path>" a "?" or "#" in the path would start the
    # query or the fragment, and the file would be made somewhere else (or not at all).
    engine = sa.create_engine(sa.engine.URL.create("sqlite", database=str(path)))

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL: readers (status, search) never block the writer; NORMAL is durable across process
        # crashes in WAL mode, which is the failure we must survive.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def open_catalog(path: Path) -> SQLiteCatalog:
    """Open (creating if needed) the catalog at ``path`` and bring its schema to the latest revision."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_sqlite_engine(path)
    # Alembic only where it has something to do (or to refuse): see catalog_schema.
    if not schema_is_current(engine):
        from imgwatch.migrations import upgrade

        upgrade(engine)
    return SQLiteCatalog(engine)


class SQLiteCatalog(CatalogJournal, CatalogJobRuns, CatalogRoots, CatalogVerdicts):
    """The real catalog service (see :class:`imgwatch.services.abc.Catalog`). Thread-safe: every call
    is its own short transaction on a pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Handlers mark their own files indexed; those that do so at the same time share one
        # transaction (as their vectors shared one upsert: see MilvusVectorStore.upsert).
        self._indexed: GroupCommit[tuple[int, FileBlob, str]] = GroupCommit(self._mark_indexed, limit=256)

    @property
    def mark_indexed_stats(self) -> GroupCommitStats:
        """How concurrent :meth:`mark_indexed` calls were combined into transactions."""
        return self._indexed.stats

    @property
    def engine(self) -> Engine:
        return self._engine

    def get(self, path: str) -> FileRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(FILES).where(FILES.c.path == os.fsencode(path))).first()
        return row_to_record(row) if row else None

    def get_many(self, ids: Iterable[int]) -> dict[int, FileRecord]:
        keys = list(ids)
        found: dict[int, FileRecord] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(sa.select(FILES).where(FILES.c.id.in_(keys[start : start + 500])))
                found.update((row.id, row_to_record(row)) for row in rows)
        return found

    def find_by_hash(self, content_hash: str, *, exclude_path: str, signature: str) -> FileRecord | None:
        query = (
            sa.select(FILES)
            .where(
                FILES.c.content_hash == content_hash,
                FILES.c.path != os.fsencode(exclude_path),
                FILES.c.state == FileState.INDEXED.value,
                FILES.c.has_vector.is_(True),
                FILES.c.signature == signature,
            )
            .order_by(FILES.c.id)
            .limit(1)
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return row_to_record(row) if row else None

    def under(self, root: str) -> Iterator[FileRecord]:
        with self._engine.connect() as conn:
            query = sa.select(*RECORD_COLUMNS).where(_under_clause(root)).order_by(FILES.c.path)
            return iter(records(conn.execute(query).all()))

    def count_under(self, root: str) -> int:
        with self._engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(FILES).where(_under_clause(root)))
            return int(count.scalar_one())

    def mark_pending(self, path: str, size: int, mtime_ns: int) -> FileRecord:
        return self.mark_pending_many([(path, size, mtime_ns)])[path]

    def mark_pending_many(self, files: Sequence[tuple[str, int, int]]) -> dict[str, FileRecord]:
        """Insert or reset ``(path, size, mtime_ns)`` rows as ``pending``, in one transaction; the
        rows by path."""
        now = db_now()
        rows = [
            {
                "path": os.fsencode(path),
                "size": size,
                "mtime_ns": mtime_ns,
                "created_at": now,
                "updated_at": now,
            }
            for path, size, mtime_ns in files
        ]
        if not rows:
            return {}
        statement = sqlite_insert(FILES).values(state=FileState.PENDING.value, has_vector=False)
        # has_vector is cleared until the work is done: after a crash mid-way the row must not vouch
        # for a vector that may be stale (the redo writes it again).
        statement = statement.on_conflict_do_update(
            index_elements=[FILES.c.path],
            set_={
                "size": statement.excluded.size,
                "mtime_ns": statement.excluded.mtime_ns,
                "state": FileState.PENDING.value,
                "error": None,
                "has_vector": False,
                "updated_at": now,
            },
        )
        with self._engine.begin() as conn:
            conn.execute(statement, rows)
            return self._by_paths(conn, [os.fsencode(path) for path, _, _ in files])

    def get_by_paths(self, paths: Iterable[str]) -> dict[str, FileRecord]:
        """The rows of those of ``paths`` the catalog knows, by path."""
        with self._engine.connect() as conn:
            return self._by_paths(conn, [os.fsencode(path) for path in paths])

    @staticmethod
    def _by_paths(conn: sa.Connection, raw: list[bytes]) -> dict[str, FileRecord]:
        found: dict[str, FileRecord] = {}
        for start in range(0, len(raw), 500):
            rows = conn.execute(sa.select(FILES).where(FILES.c.path.in_(raw[start : start + 500])))
            found.update((record.path, record) for record in map(row_to_record, rows))
        return found

    def twins_by_hash(self, hashes: Iterable[str], signature: str) -> dict[str, FileRecord]:
        """For each content hash, the first indexed row with a vector made by ``signature``."""
        keys = list(dict.fromkeys(hashes))
        first: list[int] = []
        current = (
            FILES.c.state == FileState.INDEXED.value,
            FILES.c.has_vector.is_(True),
            FILES.c.signature == signature,
        )
        with self._engine.connect() as conn:
            for start in range(0, len(keys), 500):
                query = sa.select(sa.func.min(FILES.c.id)).where(
                    FILES.c.content_hash.in_(keys[start : start + 500]), *current
                )
                first.extend(conn.execute(query.group_by(FILES.c.content_hash)).scalars())
        return {r.content_hash: r for r in self.get_many(first).values() if r.content_hash}

    def sizes_with_vectors(self, sizes: Iterable[int], signature: str) -> set[int]:
        """Which of ``sizes`` some indexed file with a current vector has (only those can be copies)."""
        keys = list(set(sizes))
        found: set[int] = set()
        with self._engine.connect() as conn:
            for start in range(0, len(keys), 500):
                query = (
                    sa.select(FILES.c.size)
                    .distinct()
                    .where(
                        FILES.c.size.in_(keys[start : start + 500]),
                        FILES.c.state == FileState.INDEXED.value,
                        FILES.c.has_vector.is_(True),
                        FILES.c.signature == signature,
                    )
                )
                found.update(conn.execute(query).scalars())
        return found

    def mark_indexed(self, record_id: int, blob: FileBlob, signature: str) -> None:
        self._indexed.write([(record_id, blob, signature)])

    def _mark_indexed(self, items: Sequence[tuple[int, FileBlob, str]]) -> None:
        # One row marked twice (with different signatures) keeps the later mark, as one call after
        # the other would: grouping by signature must not reorder them.
        latest = {record_id: (blob, signature) for record_id, blob, signature in items}
        by_signature: dict[str, list[tuple[int, FileBlob]]] = {}
        for record_id, (blob, signature) in latest.items():
            by_signature.setdefault(signature, []).append((record_id, blob))
        with self._engine.begin() as conn:
            for signature, done in by_signature.items():
                conn.execute(self._indexed_statement(signature), self._indexed_rows(done))

    def mark_indexed_many(self, done: Sequence[tuple[int, FileBlob]], signature: str) -> None:
        """Mark ``(record_id, blob)`` rows indexed (their vectors are stored), in one transaction."""
        if not done:
            return
        with self._engine.begin() as conn:
            conn.execute(self._indexed_statement(signature), self._indexed_rows(done))

    @staticmethod
    def _indexed_statement(signature: str) -> sa.Update:
        now = db_now()
        return (
            sa.update(FILES)
            .where(FILES.c.id == sa.bindparam("key"))
            .values(
                size=sa.bindparam("new_size"),
                mtime_ns=sa.bindparam("new_mtime_ns"),
                content_hash=sa.bindparam("new_hash"),
                state=FileState.INDEXED.value,
                error=None,
                has_vector=True,
                signature=signature,
                updated_at=now,
                indexed_at=now,
            )
        )

    @staticmethod
    def _indexed_rows(done: Sequence[tuple[int, FileBlob]]) -> list[dict[str, Any]]:
        return [
            {"key": key, "new_size": b.size, "new_mtime_ns": b.mtime_ns, "new_hash": b.content_hash}
            for key, b in done
        ]

    def mark_failed(
        self, record_id: int, size: int, mtime_ns: int, content_hash: str | None, error: str
    ) -> None:
        self._update(
            record_id,
            size=size,
            mtime_ns=mtime_ns,
            content_hash=content_hash,
            state=FileState.FAILED.value,
            error=error,
            has_vector=False,
            signature=None,
            updated_at=db_now(),
        )

    def touch(self, record_id: int, size: int, mtime_ns: int) -> None:
        self._update(
            record_id,
            size=size,
            mtime_ns=mtime_ns,
            state=FileState.INDEXED.value,
            error=None,
            has_vector=True,
            updated_at=db_now(),
        )

    def move(self, record_id: int, dest_path: str) -> None:
        self._update(record_id, path=os.fsencode(dest_path), updated_at=db_now())

    def delete(self, record_id: int) -> None:
        self.delete_many([record_id])

    def delete_many(self, record_ids: Iterable[int]) -> None:
        keys = list(record_ids)
        with self._engine.begin() as conn:
            for start in range(0, len(keys), 500):
                conn.execute(sa.delete(FILES).where(FILES.c.id.in_(keys[start : start + 500])))

    def move_many(self, moves: Iterable[tuple[int, str]]) -> None:
        """Rename many rows in one transaction: ``(record_id, new_path)`` pairs."""
        now = db_now()
        rows = [{"key": key, "new_path": os.fsencode(path), "now": now} for key, path in moves]
        if not rows:
            return
        statement = (
            sa.update(FILES)
            .where(FILES.c.id == sa.bindparam("key"))
            .values(path=sa.bindparam("new_path"), updated_at=sa.bindparam("now"))
        )
        with self._engine.begin() as conn:
            conn.execute(statement, rows)

    def _update(self, record_id: int, **values: Any) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.update(FILES).where(FILES.c.id == record_id).values(**values))

    def counts(self) -> Mapping[FileState, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(FILES.c.state, sa.func.count()).group_by(FILES.c.state))
            found = {FileState(state): n for state, n in rows}
        return {state: found.get(state, 0) for state in FileState}

    def vector_count(self) -> int:
        """Rows whose vector is in the store: a watcher alone in its collection has that many entities
        there (reconcile repairs any drift), counted without opening the store."""
        with self._engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(FILES).where(FILES.c.has_vector.is_(True))
            return int(conn.execute(query).scalar_one())

    def failures(self) -> list[FileRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(FILES).where(FILES.c.state == FileState.FAILED.value).order_by(FILES.c.path)
            )
            return [row_to_record(row) for row in rows]

    def get_meta(self, key: str) -> str | None:
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(META.c.value).where(META.c.key == key)).scalar()
        return str(value) if value is not None else None

    def set_meta(self, key: str, value: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sqlite_insert(META)
                .values(key=key, value=value)
                .on_conflict_do_update(index_elements=[META.c.key], set_={"value": value})
            )

    def delete_meta(self, key: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(META).where(META.c.key == key))

    def forget_vectors(self) -> None:
        """Mark every file as needing extraction again (after the vector store was rebuilt)."""
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(FILES).values(state=FileState.PENDING.value, has_vector=False, signature=None)
            )

    # Maintenance (see watcher/jobs.py).

    def ids_with_vectors(self) -> dict[int, FileRecord]:
        """Indexed rows that vouch for a vector, by id."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(FILES).where(FILES.c.has_vector.is_(True), FILES.c.state == FileState.INDEXED.value)
            )
            return {row.id: row_to_record(row) for row in rows}

    def all_ids(self) -> set[int]:
        with self._engine.connect() as conn:
            return set(conn.execute(sa.select(FILES.c.id)).scalars())

    def iter_ids_with_vectors(self, batch_size: int = 1000) -> Iterator[list[int]]:
        """Ids of indexed rows that vouch for a vector, ascending, ``batch_size`` at a time. Each
        batch is its own short query (keyset paging), so no transaction stays open between them."""
        after = 0
        while True:
            with self._engine.connect() as conn:
                batch = list(
                    conn.execute(
                        sa.select(FILES.c.id)
                        .where(
                            FILES.c.id > after,
                            FILES.c.has_vector.is_(True),
                            FILES.c.state == FileState.INDEXED.value,
                        )
                        .order_by(FILES.c.id)
                        .limit(batch_size)
                    ).scalars()
                )
            if not batch:
                return
            yield batch
            after = batch[-1]

    def optimise_storage(self, vacuum_free_share: float = 0.2) -> dict[str, int]:
        """Checkpoint the WAL, VACUUM when much of the file is free pages, refresh planner stats."""
        with self._engine.connect() as conn:
            pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
            free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
        vacuumed = pages > 0 and free / pages > vacuum_free_share
        with self._engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            if vacuumed:
                conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("ANALYZE")
            conn.exec_driver_sql("PRAGMA optimize")
            conn.commit()
        return {"sqlite_pages": pages, "sqlite_free_pages": free, "vacuumed": int(vacuumed)}

    def close(self) -> None:
        self._engine.dispose()
