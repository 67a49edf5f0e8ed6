"""Duplicate groups over the real stores: planted copies are found, and nothing else; byte-identical
groups are told from look-alike ones, and come from the catalog alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from imgwatch import pairs
from imgwatch.cli import build_parser
from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.duplicates import DuplicateGroup, find_duplicates, find_exact_duplicates
from imgwatch.errors import ImgwatchError
from imgwatch.samples import photo
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.surfaces import start_control_socket
from tests.conftest import OpenContext, index, jpeg_bytes, write_photo
from tests.harness import socket_parts
from tests.test_cli import _json, imgwatch

# Seeded random weights score unrelated scenes up to about 0.96 and copies above 0.99; real
# ImageNet weights separate them far more, where the CLI's default of 0.95 applies.
THRESHOLD = 0.99


def _copies(root: Path, seed: int, kinds: list[str]) -> set[str]:
    original = photo(seed, (480, 360))
    paths = {str(root / f"scene{seed}.jpg")}
    for kind in kinds:
        if kind == "resized":
            data = jpeg_bytes(original.resize((240, 180), Image.Resampling.LANCZOS))
        elif kind == "small":
            data = jpeg_bytes(original.resize((160, 120), Image.Resampling.LANCZOS), quality=70)
        else:  # re-encoded at a lower JPEG quality
            data = jpeg_bytes(original, quality=int(kind.removeprefix("q")))
        target = root / "copies" / f"scene{seed}-{kind}.jpg"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        paths.add(str(target))
    return paths


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, list[set[str]]]:
    """Ten distinct scenes; three of them with resized / re-encoded copies (groups of 5, 3 and 2)."""
    root = tmp_path / "library"
    root.mkdir()
    for seed in range(10):
        (root / f"scene{seed}.jpg").write_bytes(jpeg_bytes(photo(seed, (480, 360))))
    groups = [
        _copies(root, 7, ["resized", "small", "q40", "q25"]),
        _copies(root, 1, ["resized", "q30"]),
        _copies(root, 4, ["small"]),
    ]
    return root, groups


def test_planted_groups_are_found_and_nothing_else(
    ctx: Context, planted: tuple[Path, list[set[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, expected = planted
    index(ctx, root)
    # Batches of 3 make the pass span several batches, and blocks of one batch against 4 columns
    # put the members of the group of 5 in different row and column blocks.
    monkeypatch.setattr(pairs, "ROWS_PER_BLOCK", 2)
    monkeypatch.setattr(pairs, "COLUMNS_PER_BLOCK", 4)

    groups = find_duplicates(ctx, threshold=THRESHOLD, batch_size=3)

    assert [set(g.paths) for g in groups] == expected  # largest first
    for group in groups:
        assert group.paths == sorted(group.paths)
        assert THRESHOLD <= group.max_score <= 1.0 + 1e-5


def test_the_pass_runs_no_model_and_skips_files_the_catalog_does_not_vouch_for(
    ctx: Context, planted: tuple[Path, list[set[str]]]
) -> None:
    root, expected = planted
    index(ctx, root)
    dropped = ctx.catalog.get(str(root / "copies" / "scene4-small.jpg"))
    assert dropped is not None
    ctx.catalog.delete(dropped.id)  # its vector stays behind in Milvus, an orphan
    before = ctx.extractor.images_embedded

    groups = find_duplicates(ctx, threshold=THRESHOLD)

    assert ctx.extractor.images_embedded == before
    assert [set(g.paths) for g in groups] == expected[:2]


def test_a_threshold_outside_the_cosine_range_is_refused(ctx: Context) -> None:
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(ctx, threshold=1.5)


def _iso_mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC).isoformat(timespec="seconds")


def test_byte_copies_make_exact_groups_and_a_resized_copy_a_similar_one(ctx: Context, tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    original = photo(1, (480, 360))
    a = root / "a.jpg"
    a.write_bytes(jpeg_bytes(original))
    a_backup = root / "backup" / "a.jpg"
    a_backup.parent.mkdir()
    a_backup.write_bytes(a.read_bytes())
    resized = root / "a-resized.jpg"
    resized.write_bytes(jpeg_bytes(original.resize((240, 180), Image.Resampling.LANCZOS)))
    b = write_photo(root / "b.jpg", 5)
    b_copy = root / "b-copy.jpg"
    b_copy.write_bytes(b.read_bytes())
    write_photo(root / "c.jpg", 8)
    index(ctx, root)

    groups = find_duplicates(ctx, threshold=THRESHOLD)

    assert [(g.kind, g.paths) for g in groups] == [
        ("similar", sorted([str(a), str(a_backup), str(resized)])),
        ("exact", sorted([str(b), str(b_copy)])),
    ]
    similar, exact = groups
    for group in groups:
        assert [m.path for m in group.members] == group.paths
        for member in group.members:
            assert (member.size, member.mtime) == (
                Path(member.path).stat().st_size,
                _iso_mtime(Path(member.path)),
            )
        assert json.loads(json.dumps(group.as_dict())) == group.as_dict()
        assert DuplicateGroup.from_dict(group.as_dict()) == group
    sizes = {m.path: (m.width, m.height) for g in groups for m in g.members}
    assert sizes[str(resized)] == (240, 180) and sizes[str(a)] == sizes[str(b)] == (480, 360)
    assert exact.max_score == 1.0 and [m.score for m in exact.members] == [1.0, 1.0]
    scores = {m.path: m.score for m in similar.members}
    assert THRESHOLD <= scores[str(resized)] < scores[str(a)]  # a's best match is its byte copy
    assert similar.max_score == max(scores.values())

    # The exact pass reads only the catalog: it finds both byte-identical pairs (the look-alike
    # stays out) with the vectors gone, and a member that can no longer be read has no pixel size.
    ctx.vectors.delete(ctx.vectors.all_ids())
    b_copy.unlink()
    before = ctx.extractor.images_embedded

    found = find_exact_duplicates(ctx.catalog)

    assert [(g.kind, g.paths, g.max_score) for g in found] == [
        ("exact", sorted([str(a), str(a_backup)]), 1.0),
        ("exact", sorted([str(b), str(b_copy)]), 1.0),
    ]
    assert {(m.path, m.width, m.height) for m in found[1].members} == {
        (str(b), 480, 360),
        (str(b_copy), None, None),
    }
    assert find_duplicates(ctx, threshold=THRESHOLD) == []  # the look-alike pass did need them
    assert ctx.extractor.images_embedded == before


def test_exact_groups_from_the_cli_load_neither_model_nor_vector_store(
    open_ctx: OpenContext, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    a = write_photo(root / "a.jpg", 1, size=(64, 48))
    (root / "old").mkdir()
    (root / "old" / "a.jpg").write_bytes(a.read_bytes())
    write_photo(root / "b.jpg", 2, size=(64, 48))
    with open_ctx() as ctx:
        index(ctx, root)

    # PYTHONPROFILEIMPORTTIME is -X importtime: every module the command imports is on stderr.
    result = imgwatch(tmp_path, "duplicates", "--exact", "--json", env={"PYTHONPROFILEIMPORTTIME": "1"})
    bad = imgwatch(tmp_path, "duplicates", "--exact", "--threshold", "0.9")

    report = _json(result)
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "sqlalchemy" in imported  # the log is read right: the catalog was opened
    assert not {"torch", "torchvision", "pymilvus", "milvus_lite", "numpy"} & imported
    [group] = report["groups"]
    assert group == {
        "kind": "exact",
        "max_score": 1.0,
        "members": [
            {
                "path": p,
                "size": a.stat().st_size,
                "width": 64,
                "height": 48,
                "mtime": _iso_mtime(Path(p)),
                "score": 1.0,
            }
            for p in sorted([str(a), str(root / "old" / "a.jpg")])
        ],
        "paths": sorted([str(a), str(root / "old" / "a.jpg")]),
    }
    assert bad.returncode == 1 and b"--threshold" in bad.stderr


def _cli_json(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> list[list[str]]:
    """``imgwatch duplicates ARGS --json`` in this process: each group's paths."""
    parsed = build_parser().parse_args(["duplicates", *args, "--json"])
    assert parsed.run(parsed, settings) == 0
    return [g["paths"] for g in json.loads(capsys.readouterr().out)["groups"]]


def test_under_since_and_until_choose_the_files_with_and_without_the_daemon(
    settings: Settings, extractor: VGG16Extractor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "library"
    a = write_photo(root / "in" / "a.jpg", 3, size=(64, 48))
    copies = [root / "in" / "copy.jpg", root / "out" / "a.jpg"]
    for copy in copies:
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(a.read_bytes())
    write_photo(root / "in" / "other.jpg", 4, size=(64, 48))
    inside = sorted([str(a), str(copies[0])])
    every = sorted([str(a), *map(str, copies)])
    options = ["--under", str(root / "in")]
    future = ["--since", (datetime.now() + timedelta(days=2)).date().isoformat()]
    with open_context(settings, command="index", extractor=extractor) as ctx:
        index(ctx, root)
    runs = ([], options, ["--exact", *options], future)
    alone = [_cli_json(settings, capsys, *args) for args in runs]
    # The daemon's command holds the data dir's lock: every answer below came through its socket.
    with open_context(settings, command="watch", extractor=extractor) as ctx:
        server = start_control_socket(socket_parts(settings, ctx, root))
        try:
            served = [
                _cli_json(settings, capsys, *args) for args in ([], options, ["--exact", *options], future)
            ]
            with pytest.raises(ImgwatchError, match="not with the verdicts"):
                _cli_json(settings, capsys, "--verdicts", *options)
        finally:
            server.stop()

    assert alone == served == [[every], [inside], [inside], []]
