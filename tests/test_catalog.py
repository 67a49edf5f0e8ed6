"""The catalog on a real SQLite file, its schema owned by the Alembic migrations."""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from imgwatch.events import ImageCreated, ImageMoved, Source
from imgwatch.migrations import alembic_config, downgrade, upgrade
from imgwatch.services.abc import FileBlob, FileState
from imgwatch.services.catalog import Base, SQLiteCatalog, create_sqlite_engine, open_catalog


def test_migrations_create_the_schema_the_code_expects(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.sqlite3")
    try:
        with catalog.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            journal = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
        assert diff == []
        assert version == "0006"
        assert journal == "wal"
    finally:
        catalog.close()


def test_migrations_go_down_and_up_again(tmp_path: Path) -> None:
    engine = create_sqlite_engine(tmp_path / "catalog.sqlite3")
    upgrade(engine)
    downgrade(engine, "base")
    assert "files" not in sa.inspect(engine).get_table_names()
    upgrade(engine)
    assert {"files", "meta"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    first = open_catalog(path)
    record = first.mark_pending("/photos/a.jpg", 1, 2)
    first.close()
    second = open_catalog(path)
    try:
        assert second.get("/photos/a.jpg") == record
    finally:
        second.close()


def test_row_ids_are_never_reused(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.sqlite3")
    try:
        first = catalog.mark_pending("/p/a.jpg", 1, 1)
        catalog.delete(first.id)
        second = catalog.mark_pending("/p/b.jpg", 1, 1)
        assert second.id > first.id  # the id is a Milvus key: reuse would alias an old vector
    finally:
        catalog.close()


def test_under_matches_the_directory_and_not_its_lookalike_siblings(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.sqlite3")
    try:
        for path in ["/a/b/x.jpg", "/a/b/c/y.jpg", "/a/bc/z.jpg", "/a/b.jpg", "/a/b-/w.jpg"]:
            catalog.mark_pending(path, 0, 0)
        assert {r.path for r in catalog.under("/a/b")} == {"/a/b/x.jpg", "/a/b/c/y.jpg"}
        assert {r.path for r in catalog.under("/a/b/")} == {"/a/b/x.jpg", "/a/b/c/y.jpg"}
        assert len(list(catalog.under("/"))) == 5
    finally:
        catalog.close()


def test_states_and_failures_are_counted(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.sqlite3")
    try:
        ok = catalog.mark_pending("/p/ok.jpg", 3, 4)
        bad = catalog.mark_pending("/p/bad.jpg", 3, 4)
        catalog.mark_pending("/p/waiting.jpg", 3, 4)
        catalog.mark_indexed(ok.id, FileBlob("/p/ok.jpg", b"abc", 3, 4, "h"), "sig")
        catalog.mark_failed(bad.id, 3, 4, None, "truncated")
        assert catalog.counts() == {FileState.INDEXED: 1, FileState.FAILED: 1, FileState.PENDING: 1}
        assert [(r.path, r.error) for r in catalog.failures()] == [("/p/bad.jpg", "truncated")]
        assert catalog.find_by_hash("h", exclude_path="/p/other.jpg", signature="sig") == catalog.get(
            "/p/ok.jpg"
        )
        assert catalog.find_by_hash("h", exclude_path="/p/other.jpg", signature="other") is None
    finally:
        catalog.close()


@settings(max_examples=60, deadline=None)
@given(name=st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_any_file_name_round_trips_exactly(tmp_path_factory: object, name: bytes) -> None:
    catalog = open_catalog(Path(str(tmp_path_factory.mktemp("cat"))) / "c.sqlite3")  # type: ignore[attr-defined]
    try:
        path = os.fsdecode(b"/photos/" + name)
        record = catalog.mark_pending(path, 1, 2)
        assert catalog.get(path) == record
        assert record.path == path
        assert os.fsencode(record.path) == b"/photos/" + name
    finally:
        catalog.close()


def test_ids_with_vectors_come_in_ascending_batches(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.db")
    try:
        records = [catalog.mark_pending(f"/p/{i}.jpg", 1, 1) for i in range(7)]
        for record in records:
            if record.id != records[3].id:  # one stays pending: it vouches for no vector
                blob = FileBlob(record.path, b"x", 1, 1, f"h{record.id}")
                catalog.mark_indexed(record.id, blob, "sig")

        batches = list(catalog.iter_ids_with_vectors(batch_size=2))
    finally:
        catalog.close()

    assert [len(b) for b in batches] == [2, 2, 2]
    assert [key for batch in batches for key in batch] == [r.id for r in records if r is not records[3]]


def test_migration_0005_keeps_a_0004_catalog_and_adds_the_roots(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    engine = create_sqlite_engine(path)
    upgrade(engine, "0004")  # a catalog as the previous release left it
    old = SQLiteCatalog(engine)
    record = old.mark_pending("/photos/a.jpg", 1, 2)
    old.mark_indexed(record.id, FileBlob("/photos/a.jpg", b"abc", 1, 2, "h"), "sig")
    old.set_meta("collection", "imgwatch")
    before = old.get("/photos/a.jpg")
    old.close()

    catalog = open_catalog(path)  # what every command does on start: upgrade to head
    try:
        assert catalog.get("/photos/a.jpg") == before
        assert catalog.get_meta("collection") == "imgwatch"
        assert catalog.known_roots() == []
        catalog.remember_roots(["/photos"], "index")
        assert catalog.known_roots() == ["/photos"]
    finally:
        catalog.close()
    engine = create_sqlite_engine(path)
    downgrade(engine, "0004")
    assert "roots" not in sa.inspect(engine).get_table_names()
    assert "files" in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_roots_are_remembered_by_their_exact_bytes_until_forgotten(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.sqlite3")
    odd = os.fsdecode(b"/mnt/caf\xe9")
    try:
        catalog.remember_roots(["/photos", odd, "/photos"], "index")
        [_, first] = catalog.root_records()  # in byte order: /mnt before /photos
        catalog.remember_roots(["/photos"], "watch")
        [other, photos] = catalog.root_records()
        assert (photos.path, photos.command, photos.added_at) == ("/photos", "watch", first.added_at)
        assert photos.last_used_at >= first.last_used_at
        assert os.fsencode(other.path) == b"/mnt/caf\xe9" and other.command == "index"

        assert catalog.forget_root("/photos") is True
        assert catalog.forget_root("/photos") is False
        assert catalog.known_roots() == [odd]
    finally:
        catalog.close()


def test_journal_rows_this_version_cannot_read_are_skipped_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = open_catalog(path)
    try:
        when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        first = catalog.journal_append(ImageCreated("/p/a.jpg", source=Source.FILESYSTEM, occurred_at=when))
        # Rows as a newer (or older, or damaged) imgwatch may leave them, written behind the catalog's back.
        odd = [
            ("ImageTeleported", b"/p/b.jpg", None, "filesystem"),  # a kind this version does not know
            ("ImageCreated", b"/p/c.jpg", None, "carrier-pigeon"),  # a source it does not know
            ("ImageMoved", b"/p/d.jpg", None, "webhook"),  # a move without its destination
        ]
        with sqlite3.connect(path) as db:
            odd_ids = [
                db.execute(
                    "INSERT INTO journal (kind, path, dest_path, source, occurred_at, attempts)"
                    " VALUES (?, ?, ?, ?, '2024-05-01 12:00:01.000000', 0)",
                    row,
                ).lastrowid
                for row in odd
            ]
        db.close()
        last = catalog.journal_append(
            ImageMoved("/p/e.jpg", "/p/f.jpg", source=Source.WEBHOOK, occurred_at=when)
        )

        with caplog.at_level(logging.WARNING, logger="imgwatch.services.catalog"):
            pending = catalog.journal_pending()

        assert pending == [
            (first, ImageCreated("/p/a.jpg", source=Source.FILESYSTEM)),
            (last, ImageMoved("/p/e.jpg", "/p/f.jpg", source=Source.WEBHOOK)),
        ]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 3
        for journal_id, (kind, *_), warning in zip(odd_ids, odd, warnings, strict=True):
            assert f"journal row {journal_id} " in warning and repr(kind) in warning
        # Only what this version will replay counts as pending; the rest is left for one that can.
        assert catalog.journal_counts() == {"pending": 2, "done": 0, "unreadable": 3}
    finally:
        catalog.close()
    with sqlite3.connect(path) as db:
        kept = db.execute("SELECT id, kind, done_at, attempts FROM journal ORDER BY id").fetchall()
    db.close()
    assert [row for row in kept if row[0] in odd_ids] == [
        (i, kind, None, 0) for i, (kind, *_) in zip(odd_ids, odd, strict=True)
    ]


def test_a_data_dir_with_url_and_config_syntax_in_its_name_opens(tmp_path: Path) -> None:
    """``?`` and ``#`` mean something in a URL, ``%`` in Alembic's (ConfigParser) settings."""
    data = tmp_path / "da%ta?x=1#frag"
    path = data / "catalog.sqlite3"

    catalog = open_catalog(path)
    try:
        record = catalog.mark_pending("/p/a.jpg", 1, 2)
    finally:
        catalog.close()
    again = open_catalog(path)  # the second open reads the Alembic version back from that file
    try:
        assert again.get("/p/a.jpg") == record
    finally:
        again.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == [data.name]
    assert {p.name for p in data.iterdir()} <= {
        "catalog.sqlite3",
        "catalog.sqlite3-wal",
        "catalog.sqlite3-shm",
    }
    with sqlite3.connect(path) as db:  # a plain file name to sqlite3: no URL parsing
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("0006",)
    db.close()

    # The configuration Alembic's own commands get, when no connection is handed over.
    engine = create_sqlite_engine(data / "other.sqlite3")
    try:
        command.upgrade(alembic_config(engine), "head")
        assert "files" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert (data / "other.sqlite3").is_file()
