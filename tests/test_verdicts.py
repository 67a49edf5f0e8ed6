"""Verdicts that stick (migration 0006): "these are not duplicates", keyed by content hash, kept through
a rename and an ``index --rebuild``, enforced inside the grouping, withdrawn on request, and served
through the daemon's socket. Real catalog, Milvus Lite, VGG16 random:0."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from imgwatch.cli import build_parser
from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.duplicates import duplicate_pass, find_duplicates
from imgwatch.errors import ImgwatchError
from imgwatch.migrations import downgrade, upgrade
from imgwatch.samples import photo
from imgwatch.services.build import open_context
from imgwatch.services.catalog import SQLiteCatalog, create_sqlite_engine, open_catalog
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.services.files import LocalFileReader
from imgwatch.surfaces import start_control_socket
from imgwatch.verdicts import (
    IdenticalContentError,
    NoContentHashError,
    NoSuchVerdictError,
    NotIndexedError,
    VerdictError,
    list_verdicts,
    mark_distinct,
    withdraw_verdict,
)
from tests.conftest import OpenContext, index, jpeg_bytes, write_photo
from tests.harness import socket_parts
from tests.test_duplicates import THRESHOLD


def _look_alikes(root: Path, seed: int, *kinds: str) -> list[Path]:
    """A scene and copies of it that score above THRESHOLD with random:0 weights, none byte-identical."""
    original = photo(seed, (480, 360))
    made = {
        "resized": jpeg_bytes(original.resize((240, 180), Image.Resampling.LANCZOS)),
        "q30": jpeg_bytes(original, quality=30),
        "small": jpeg_bytes(original.resize((160, 120), Image.Resampling.LANCZOS), quality=70),
    }
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"scene{seed}.jpg"]
    paths[0].write_bytes(jpeg_bytes(original))
    for kind in kinds:
        paths.append(root / f"scene{seed}-{kind}.jpg")
        paths[-1].write_bytes(made[kind])
    return paths


def _groups(ctx: Context) -> list[set[str]]:
    return [set(g.paths) for g in find_duplicates(ctx, threshold=THRESHOLD)]


def test_a_verdict_keeps_look_alikes_apart_through_a_rename_and_a_rebuild_until_withdrawn(
    open_ctx: OpenContext, tmp_path: Path
) -> None:
    root = tmp_path / "library"
    a, b = _look_alikes(root, 7, "resized")
    write_photo(root / "other.jpg", 3)
    with open_ctx() as ctx:
        index(ctx, root)
        assert _groups(ctx) == [{str(a), str(b)}]  # look-alikes, before any verdict

        marked = mark_distinct(ctx.catalog, [str(a), str(b)], note="burst shots")

        assert marked.added == 1
        result = duplicate_pass(ctx, threshold=THRESHOLD)
        assert result.groups == []
        [apart] = result.kept_apart  # the refused pair keeps its score, for a threshold histogram
        assert (apart.a, apart.b) == tuple(sorted([str(a), str(b)])) and apart.score >= THRESHOLD

        renamed = root / "renamed" / "b.jpg"
        renamed.parent.mkdir()
        b.rename(renamed)
        index(ctx, root)  # the rescan sees the move
        assert ctx.catalog.get(str(b)) is None and ctx.catalog.get(str(renamed)) is not None
        assert _groups(ctx) == []
        [verdict] = list_verdicts(ctx.catalog)
        assert {verdict.a, verdict.b} == {str(a), str(renamed)}
        assert verdict.note == "burst shots"

    with open_ctx(rebuild=True) as ctx:
        assert ctx.catalog.ids_with_vectors() == {}  # every vector was dropped
        before = ctx.extractor.images_embedded
        index(ctx, root)
        assert ctx.extractor.images_embedded - before == 3  # all made again by the model
        assert _groups(ctx) == []
        assert list_verdicts(ctx.catalog) == [verdict]

        withdrawn = withdraw_verdict(ctx.catalog, str(renamed), str(a))  # either order names it

        assert withdrawn == verdict
        assert list_verdicts(ctx.catalog) == []
        assert _groups(ctx) == [{str(a), str(renamed)}]


def test_a_file_like_both_sides_of_a_verdict_joins_one_side_only(ctx: Context, tmp_path: Path) -> None:
    a, b, c = (str(p) for p in _look_alikes(tmp_path / "library", 1, "q30", "resized"))
    index(ctx, tmp_path / "library")
    assert _groups(ctx) == [{a, b, c}]

    mark_distinct(ctx.catalog, [a, b])
    # Batches of one: each pair is met on its own, so the refusal must hold across batches (the set
    # that took c must refuse b, or a, although c itself has no verdict).
    result = duplicate_pass(ctx, threshold=THRESHOLD, batch_size=1)

    [group] = result.groups
    assert c in group.paths and len(group.paths) == 2  # c went with a or with b; the other is alone
    assert result.kept_apart and all(p.score >= THRESHOLD for p in result.kept_apart)
    joined = {(p.a, p.b) for p in result.kept_apart}
    assert joined <= {tuple(sorted(pair)) for pair in [(a, b), (a, c), (b, c)]}


def _indexed(catalog: SQLiteCatalog, *paths: Path) -> None:
    """Rows as the indexer leaves them for these files (their real bytes and hash)."""
    files = LocalFileReader(10**8)
    for path in paths:
        blob = files.read(str(path))
        record = catalog.mark_pending(blob.path, blob.size, blob.mtime_ns)
        catalog.mark_indexed(record.id, blob, "sig")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    opened = open_catalog(tmp_path / "catalog.sqlite3")
    yield opened
    opened.close()


def test_every_pair_is_recorded_once_and_named_by_the_files_that_have_it(
    catalog: SQLiteCatalog, tmp_path: Path
) -> None:
    a, b, c = (write_photo(tmp_path / f"{name}.jpg", seed, (64, 48)) for seed, name in enumerate("abc", 1))
    _indexed(catalog, a, b, c)

    first = mark_distinct(catalog, [str(a), str(b), str(c)])
    again = mark_distinct(catalog, [str(c), str(a)], note="two scenes")

    assert first.added == 3 and again.added == 0
    listed = list_verdicts(catalog)
    assert {frozenset((v.a, v.b)) for v in listed} == {
        frozenset(p) for p in [(str(a), str(b)), (str(a), str(c)), (str(b), str(c))]
    }
    [ac] = again.verdicts
    assert ac.note == "two scenes" and ac.created_at in {v.created_at for v in first.verdicts}
    assert all(v.hashes == tuple(sorted(v.hashes)) for v in listed)
    assert json.loads(json.dumps(ac.as_dict())) == {
        "a": ac.a,
        "b": ac.b,
        "hashes": list(ac.hashes),
        "created_at": ac.created_at.isoformat(timespec="seconds"),
        "note": "two scenes",
    }

    # A content no file has any more is named by its hash, and can still be withdrawn by it.
    gone = catalog.get(str(a))
    assert gone is not None and gone.content_hash is not None
    catalog.delete(gone.id)
    by_hash = [v for v in list_verdicts(catalog) if gone.content_hash in v.hashes]
    assert len(by_hash) == 2 and all(gone.content_hash in (v.a, v.b) for v in by_hash)
    withdraw_verdict(catalog, gone.content_hash, str(b))
    assert len(list_verdicts(catalog)) == 2


def test_verdicts_refuse_what_they_cannot_record_and_record_nothing_then(
    catalog: SQLiteCatalog, tmp_path: Path
) -> None:
    a = write_photo(tmp_path / "a.jpg", 1, (64, 48))
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(a.read_bytes())
    waiting = write_photo(tmp_path / "waiting.jpg", 2, (64, 48))
    _indexed(catalog, a, copy)
    catalog.mark_pending(str(waiting), waiting.stat().st_size, waiting.stat().st_mtime_ns)  # seen, not read

    with pytest.raises(NotIndexedError, match=r"nowhere\.jpg is not in the index"):
        mark_distinct(catalog, [str(a), str(tmp_path / "nowhere.jpg")])
    with pytest.raises(NoContentHashError, match=r"waiting\.jpg has no content hash yet"):
        mark_distinct(catalog, [str(a), str(waiting)])
    with pytest.raises(IdenticalContentError, match="byte-identical"):
        mark_distinct(catalog, [str(a), str(copy)])
    with pytest.raises(VerdictError, match="at least two different files"):
        mark_distinct(catalog, [str(a), str(a)])
    with pytest.raises(NoSuchVerdictError, match="no verdict on"):
        withdraw_verdict(catalog, str(a), str(copy))
    assert list_verdicts(catalog) == []


def test_migration_0006_keeps_a_0005_catalog_and_adds_the_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    engine = create_sqlite_engine(path)
    upgrade(engine, "0005")  # a catalog as the previous release left it
    old = SQLiteCatalog(engine)
    a, b = write_photo(tmp_path / "a.jpg", 1, (64, 48)), write_photo(tmp_path / "b.jpg", 2, (64, 48))
    _indexed(old, a, b)
    old.remember_roots([str(tmp_path)], "index")
    before = [old.get(str(a)), old.get(str(b))]
    assert "verdicts" not in sa.inspect(engine).get_table_names()
    old.close()

    catalog = open_catalog(path)  # what every command does on start: upgrade to head
    try:
        assert [catalog.get(str(a)), catalog.get(str(b))] == before
        assert catalog.known_roots() == [str(tmp_path)]
        assert list_verdicts(catalog) == []
        mark_distinct(catalog, [str(a), str(b)])
        [verdict] = list_verdicts(catalog)
        with catalog.engine.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="ck_verdicts"):
            # The table itself keeps pairs ordered, so one pair cannot have two rows.
            conn.execute(
                sa.text("INSERT INTO verdicts (hash_a, hash_b, created_at) VALUES (:a, :b, '2026-12-01')"),
                {"a": verdict.hashes[1], "b": verdict.hashes[0]},
            )
    finally:
        catalog.close()
    engine = create_sqlite_engine(path)
    downgrade(engine, "0005")
    assert "verdicts" not in sa.inspect(engine).get_table_names()
    assert SQLiteCatalog(engine).get(str(a)) == before[0]
    engine.dispose()


def _cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """``imgwatch duplicates ARGS --json`` in this process (as the CLI parses and runs it)."""
    parsed = build_parser().parse_args(["duplicates", *args, "--json"])
    assert parsed.run(parsed, settings) == 0
    return json.loads(capsys.readouterr().out)


def test_the_cli_goes_through_the_daemons_socket_when_one_runs(
    settings: Settings, extractor: VGG16Extractor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "library"
    a, b = (str(p) for p in _look_alikes(root, 4, "small"))
    copy = root / "backup" / "scene4.jpg"
    copy.parent.mkdir()
    copy.write_bytes(Path(a).read_bytes())
    # The daemon's command: the CLI finds it by the lock's holder and talks to its socket. Opening the
    # data dir directly would fail on that same lock, so every answer below came through the socket.
    with open_context(settings, command="watch", extractor=extractor) as ctx:
        index(ctx, root)
        parts = socket_parts(settings, ctx, root)
        server = start_control_socket(parts)
        try:
            similar = _cli(settings, capsys, "--threshold", str(THRESHOLD))
            exact = _cli(settings, capsys, "--exact")
            marked = _cli(settings, capsys, "--mark-distinct", a, b)
            listed = _cli(settings, capsys, "--verdicts")
            apart = _cli(settings, capsys, "--threshold", str(THRESHOLD))
            with pytest.raises(ImgwatchError, match=r"nowhere\.jpg is not in the index"):
                _cli(settings, capsys, "--mark-distinct", a, str(root / "nowhere.jpg"))
            withdrawn = _cli(settings, capsys, "--withdraw", b, a)
        finally:
            server.stop()

    [group] = similar["groups"]
    assert (group["kind"], group["paths"]) == ("similar", sorted([a, b, str(copy)]))
    assert [m["path"] for m in group["members"]] == group["paths"]
    assert [(g["kind"], g["paths"], g["max_score"]) for g in exact["groups"]] == [
        ("exact", sorted([a, str(copy)]), 1.0)
    ]
    assert marked["added"] == 1 and len(marked["verdicts"]) == 1
    assert listed["verdicts"] == marked["verdicts"]
    # b is kept apart from a, and from a's byte copy too: the verdict is on the content.
    assert [g["paths"] for g in apart["groups"]] == [sorted([a, str(copy)])]
    assert withdrawn["withdrawn"] == marked["verdicts"][0]
