"""The catalog: what the index knows about each file, in SQLite through SQLAlchemy 2.x.

The schema belongs to the Alembic migrations in ``migrations/``; :func:`open_catalog` applies them.
Paths are stored as their exact bytes (``os.fsencode``), so names that are not valid UTF-8 survive.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from imgwatch.events import EVENT_TYPES, ImageEvent, Source, paths_of
from imgwatch.services.abc import FileBlob, FileRecord, FileState, RootRecord

BUSY_TIMEOUT_MS = 30_000

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    """Mirror of the ``files`` table as the migrations define it (they own the schema)."""

    __tablename__ = "files"
    __table_args__ = (
        sa.UniqueConstraint("path", name="uq_files_path"),
        sa.CheckConstraint("state IN ('pending', 'indexed', 'failed')", name="ck_files_state"),
        {"sqlite_autoincrement": True},  # ids are vector keys: never reuse one
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[bytes] = mapped_column(sa.LargeBinary)
    size: Mapped[int]
    mtime_ns: Mapped[int] = mapped_column(sa.BigInteger)
    content_hash: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    error: Mapped[str | None] = mapped_column(sa.Text)
    has_vector: Mapped[bool] = mapped_column(default=False)
    signature: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    indexed_at: Mapped[datetime | None]


class MetaRow(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)


class JournalRow(Base):
    """Mirror of the ``journal`` table (migration 0002)."""

    __tablename__ = "journal"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    path: Mapped[bytes] = mapped_column(sa.LargeBinary)
    dest_path: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    source: Mapped[str] = mapped_column(sa.String(16))
    occurred_at: Mapped[datetime]
    done_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(server_default="0")
    error: Mapped[str | None] = mapped_column(sa.Text)


class JobRunRow(Base):
    """Mirror of the ``job_runs`` table (migration 0003)."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(sa.String(32), index=True)
    started_at: Mapped[datetime]
    duration_s: Mapped[float] = mapped_column(sa.Float)
    outcome: Mapped[str] = mapped_column(sa.String(16))
    counts: Mapped[str] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)


class ReindexRow(Base):
    """Mirror of the ``reindex_vectors`` table (migration 0004)."""

    __tablename__ = "reindex_vectors"

    file_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    content_hash: Mapped[str | None] = mapped_column(sa.String(64))
    path: Mapped[bytes] = mapped_column(sa.LargeBinary)
    error: Mapped[str | None] = mapped_column(sa.Text)


class RootRow(Base):
    """Mirror of the ``roots`` table (migration 0005)."""

    __tablename__ = "roots"
    __table_args__ = (sa.UniqueConstraint("path", name="uq_roots_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[bytes] = mapped_column(sa.LargeBinary)
    added_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    command: Mapped[str] = mapped_column(sa.String(16))


FILES = cast(sa.Table, FileRow.__table__)
META = cast(sa.Table, MetaRow.__table__)
JOURNAL = cast(sa.Table, JournalRow.__table__)
JOB_RUNS = cast(sa.Table, JobRunRow.__table__)
LEDGER = cast(sa.Table, ReindexRow.__table__)
ROOTS = cast(sa.Table, RootRow.__table__)


def _journal_readable() -> sa.ColumnElement[bool]:
    """A journal row this version can turn back into its event: a kind and a source it knows, and as
    many paths as that kind has. Others come from a newer or older imgwatch, or from damage; they
    are left as they are (a version that understands them may replay them) and skipped."""
    two_paths = [
        name for name, cls in EVENT_TYPES.items() if "dest_path" in {f.name for f in dataclasses.fields(cls)}
    ]
    one_path = [name for name in EVENT_TYPES if name not in two_paths]
    return sa.and_(
        JOURNAL.c.source.in_([source.value for source in Source]),
        sa.or_(
            sa.and_(JOURNAL.c.kind.in_(one_path), JOURNAL.c.dest_path.is_(None)),
            sa.and_(JOURNAL.c.kind.in_(two_paths), JOURNAL.c.dest_path.is_not(None)),
        ),
    )


def _now() -> datetime:
    # SQLite keeps naive datetimes; all of ours are UTC.
    return datetime.now(UTC).replace(tzinfo=None)


def row_to_record(row: Any) -> FileRecord:
    return FileRecord(
        id=row.id,
        path=os.fsdecode(row.path),
        size=row.size,
        mtime_ns=row.mtime_ns,
        content_hash=row.content_hash,
        state=FileState(row.state),
        error=row.error,
        has_vector=bool(row.has_vector),
        signature=row.signature,
        updated_at=row.updated_at.replace(tzinfo=UTC),
    )


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
    from imgwatch.migrations import upgrade

    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_sqlite_engine(path)
    upgrade(engine)
    return SQLiteCatalog(engine)


class SQLiteCatalog:
    """The real catalog service (see :class:`imgwatch.services.abc.Catalog`). Thread-safe: every call
    is its own short transaction on a pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

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
            rows = conn.execute(sa.select(FILES).where(_under_clause(root)).order_by(FILES.c.path)).all()
        return iter([row_to_record(row) for row in rows])

    def count_under(self, root: str) -> int:
        with self._engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(FILES).where(_under_clause(root)))
            return int(count.scalar_one())

    def mark_pending(self, path: str, size: int, mtime_ns: int) -> FileRecord:
        raw = os.fsencode(path)
        now = _now()
        with self._engine.begin() as conn:
            conn.execute(
                sqlite_insert(FILES)
                .values(
                    path=raw,
                    size=size,
                    mtime_ns=mtime_ns,
                    state=FileState.PENDING.value,
                    has_vector=False,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_update(
                    index_elements=[FILES.c.path],
                    # has_vector is cleared until the work is done: after a crash mid-way the row must
                    # not vouch for a vector that may be stale (the redo writes it again).
                    set_={
                        "size": size,
                        "mtime_ns": mtime_ns,
                        "state": FileState.PENDING.value,
                        "error": None,
                        "has_vector": False,
                        "updated_at": now,
                    },
                )
            )
            row = conn.execute(sa.select(FILES).where(FILES.c.path == raw)).one()
        return row_to_record(row)

    def mark_indexed(self, record_id: int, blob: FileBlob, signature: str) -> None:
        now = _now()
        self._update(
            record_id,
            size=blob.size,
            mtime_ns=blob.mtime_ns,
            content_hash=blob.content_hash,
            state=FileState.INDEXED.value,
            error=None,
            has_vector=True,
            signature=signature,
            updated_at=now,
            indexed_at=now,
        )

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
            updated_at=_now(),
        )

    def touch(self, record_id: int, size: int, mtime_ns: int) -> None:
        self._update(
            record_id,
            size=size,
            mtime_ns=mtime_ns,
            state=FileState.INDEXED.value,
            error=None,
            has_vector=True,
            updated_at=_now(),
        )

    def move(self, record_id: int, dest_path: str) -> None:
        self._update(record_id, path=os.fsencode(dest_path), updated_at=_now())

    def delete(self, record_id: int) -> None:
        self.delete_many([record_id])

    def delete_many(self, record_ids: Iterable[int]) -> None:
        keys = list(record_ids)
        with self._engine.begin() as conn:
            for start in range(0, len(keys), 500):
                conn.execute(sa.delete(FILES).where(FILES.c.id.in_(keys[start : start + 500])))

    def move_many(self, moves: Iterable[tuple[int, str]]) -> None:
        """Rename many rows in one transaction: ``(record_id, new_path)`` pairs."""
        now = _now()
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

    # The roots that index and watch were given (see migration 0005).

    def remember_roots(self, paths: Iterable[str], command: str) -> None:
        now = _now()
        rows = [{"path": os.fsencode(path)} for path in dict.fromkeys(paths)]
        if not rows:
            return
        statement = sqlite_insert(ROOTS).values(added_at=now, last_used_at=now, command=command)
        statement = statement.on_conflict_do_update(
            index_elements=[ROOTS.c.path], set_={"last_used_at": now, "command": command}
        )
        with self._engine.begin() as conn:
            conn.execute(statement, rows)

    def known_roots(self) -> list[str]:
        return [record.path for record in self.root_records()]

    def root_records(self) -> list[RootRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(ROOTS).order_by(ROOTS.c.path)).all()
        return [
            RootRecord(
                path=os.fsdecode(row.path),
                added_at=row.added_at.replace(tzinfo=UTC),
                last_used_at=row.last_used_at.replace(tzinfo=UTC),
                command=row.command,
            )
            for row in rows
        ]

    def forget_root(self, path: str) -> bool:
        with self._engine.begin() as conn:
            result = conn.execute(sa.delete(ROOTS).where(ROOTS.c.path == os.fsencode(path)))
            return bool(result.rowcount)

    # The journal: events learnt and not yet acted on (see migration 0002).

    def journal_append(self, event: ImageEvent) -> int:
        paths = paths_of(event)
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.insert(JOURNAL).values(
                    kind=type(event).__name__,
                    path=os.fsencode(paths[0]),
                    dest_path=os.fsencode(paths[1]) if len(paths) > 1 else None,
                    source=event.source.value,
                    occurred_at=event.occurred_at.astimezone(UTC).replace(tzinfo=None),
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def journal_done(self, ids: Iterable[int], error: str | None = None) -> None:
        keys = list(ids)
        if keys:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(JOURNAL).where(JOURNAL.c.id.in_(keys)).values(done_at=_now(), error=error)
                )

    def journal_retry(self, ids: Iterable[int], error: str) -> None:
        keys = list(ids)
        if keys:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(JOURNAL)
                    .where(JOURNAL.c.id.in_(keys))
                    .values(attempts=JOURNAL.c.attempts + 1, error=error)
                )

    def journal_pending(self) -> list[tuple[int, ImageEvent]]:
        """Events not yet done, oldest first, to replay after a restart. A row this version cannot
        read is logged and skipped, and stays in the journal untouched: one bad row must not keep
        the daemon from starting."""
        readable = _journal_readable().label("readable")
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(JOURNAL, readable).where(JOURNAL.c.done_at.is_(None)).order_by(JOURNAL.c.id)
            ).all()
        pending = []
        for row in rows:
            if not row.readable:
                log.warning(
                    "journal row %d (kind %r, source %r, path %r) is not an event this version knows; "
                    "skipped and left in the journal",
                    row.id,
                    row.kind,
                    row.source,
                    os.fsdecode(row.path),
                )
                continue
            cls = EVENT_TYPES[row.kind]
            # ``is not None``, as in _journal_readable(): that is what decided the number of paths.
            paths = [os.fsdecode(row.path)]
            if row.dest_path is not None:
                paths.append(os.fsdecode(row.dest_path))
            occurred_at = row.occurred_at.replace(tzinfo=UTC)
            event = cls(*paths, source=Source(row.source), occurred_at=occurred_at)
            pending.append((int(row.id), event))
        return pending

    def journal_counts(self) -> dict[str, int]:
        """``pending``: rows to replay; ``unreadable``: rows not done that this version skips (see
        :meth:`journal_pending`), so that they do not look like work that never gets done."""
        not_done = JOURNAL.c.done_at.is_(None)
        with self._engine.connect() as conn:
            pending = conn.execute(
                sa.select(sa.func.count()).select_from(JOURNAL).where(not_done, _journal_readable())
            ).scalar_one()
            unreadable = conn.execute(
                sa.select(sa.func.count()).select_from(JOURNAL).where(not_done, ~_journal_readable())
            ).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(JOURNAL)).scalar_one()
        return {
            "pending": int(pending),
            "done": int(total) - int(pending) - int(unreadable),
            "unreadable": int(unreadable),
        }

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

    def prune_journal(self, older_than: datetime) -> int:
        """Delete done journal rows older than ``older_than`` (UTC); returns how many."""
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.delete(JOURNAL).where(
                    JOURNAL.c.done_at.is_not(None), JOURNAL.c.done_at < older_than.replace(tzinfo=None)
                )
            )
            return int(result.rowcount or 0)

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

    def record_job_run(
        self,
        job: str,
        started_at: datetime,
        duration_s: float,
        outcome: str,
        counts: Mapping[str, int],
        error: str | None,
    ) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(JOB_RUNS).values(
                    job=job,
                    started_at=started_at.astimezone(UTC).replace(tzinfo=None),
                    duration_s=duration_s,
                    outcome=outcome,
                    counts=json.dumps(dict(counts)),
                    error=error,
                )
            )

    def last_job_runs(self) -> dict[str, dict[str, object]]:
        """The latest run of each job: started_at (ISO, UTC), duration_s, outcome, counts, error."""
        latest = sa.select(sa.func.max(JOB_RUNS.c.id)).group_by(JOB_RUNS.c.job)
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(JOB_RUNS).where(JOB_RUNS.c.id.in_(latest))).all()
        return {
            row.job: {
                "started_at": row.started_at.replace(tzinfo=UTC).isoformat(),
                "duration_s": round(row.duration_s, 3),
                "outcome": row.outcome,
                "counts": json.loads(row.counts),
                "error": row.error,
            }
            for row in rows
        }

    def close(self) -> None:
        self._engine.dispose()
