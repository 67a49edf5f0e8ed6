"""The catalog's tables as the code sees them: mirrors of what the Alembic migrations define.

The migrations own the schema; these mirrors only tell SQLAlchemy the columns. Paths are stored as
their exact bytes (``os.fsencode``), so names that are not valid UTF-8 survive.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from imgwatch.services.abc import FileRecord, FileState


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


class VerdictRow(Base):
    """Mirror of the ``verdicts`` table (migration 0006): two content hashes, ordered, that are not
    duplicates of each other."""

    __tablename__ = "verdicts"
    __table_args__ = (
        sa.UniqueConstraint("hash_a", "hash_b", name="uq_verdicts_pair"),
        sa.CheckConstraint("hash_a < hash_b", name="ck_verdicts_ordered"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    hash_a: Mapped[str] = mapped_column(sa.String(64))
    hash_b: Mapped[str] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(sa.Text)


FILES = cast(sa.Table, FileRow.__table__)
META = cast(sa.Table, MetaRow.__table__)
JOURNAL = cast(sa.Table, JournalRow.__table__)
JOB_RUNS = cast(sa.Table, JobRunRow.__table__)
LEDGER = cast(sa.Table, ReindexRow.__table__)
ROOTS = cast(sa.Table, RootRow.__table__)
VERDICTS = cast(sa.Table, VerdictRow.__table__)


def db_now() -> datetime:
    """Now, as the catalog stores it: SQLite keeps naive datetimes, and all of ours are UTC."""
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


#: :func:`records`'s columns: ``updated_at`` as SQLite's text, which :func:`records` parses itself.
RECORD_COLUMNS = (
    FILES.c.id,
    FILES.c.path,
    FILES.c.size,
    FILES.c.mtime_ns,
    FILES.c.content_hash,
    FILES.c.state,
    FILES.c.error,
    FILES.c.has_vector,
    FILES.c.signature,
    sa.type_coerce(FILES.c.updated_at, sa.String),
)
_STATES = {state.value: state for state in FileState}


def records(rows: Any) -> list[FileRecord]:
    """Records from rows of :data:`RECORD_COLUMNS`: half the time of :func:`row_to_record` on
    SQLAlchemy's rows (measured: 0.19 s against 0.37 s for 20,000), which counts for a whole tree."""
    fsdecode = os.fsdecode
    return [
        FileRecord(
            id,
            fsdecode(path),
            size,
            mtime_ns,
            content_hash,
            _STATES[state],
            error,
            bool(has_vector),
            signature,
            datetime.fromisoformat(updated_at).replace(tzinfo=UTC),
        )
        for id, path, size, mtime_ns, content_hash, state, error, has_vector, signature, updated_at in rows
    ]
