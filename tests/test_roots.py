"""The roots an index remembers (migration 0005): ``reindex`` and ``watch`` without arguments,
``status`` listing them, ``forget`` dropping one with its files. Real catalog, Milvus Lite, VGG16."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.roots import UnknownRootError, forget_root
from imgwatch.search import search_images
from imgwatch.status import gather_status
from tests.conftest import index, write_photo
from tests.harness import RunningDaemon, imgwatch_cli
from tests.test_cli import _json, _json_lines, imgwatch


def test_forget_root_removes_its_files_and_their_vectors(ctx: Context, photos: Path, tmp_path: Path) -> None:
    other = write_photo(tmp_path / "other" / "x.jpg", 11)
    index(ctx, photos, other.parent)
    ctx.catalog.remember_roots([str(photos), str(other.parent)], "index")

    removed = forget_root(ctx, f"{photos}/")  # a trailing slash names the same root

    assert removed == 8
    assert list(ctx.catalog.under(str(photos))) == []
    assert ctx.catalog.known_roots() == [str(other.parent)]
    assert ctx.vectors.count() == 1
    [result] = search_images([("q", (photos / "photo0.jpg").read_bytes())], ctx, k=10)
    assert [m.path for m in result.matches] == [str(other)]
    assert (photos / "photo0.jpg").exists()  # forgetting is not deleting


def test_forget_takes_a_folder_with_files_or_a_remembered_one_and_refuses_anything_else(
    ctx: Context, photos: Path, tmp_path: Path
) -> None:
    index(ctx, photos)  # indexed in-process: no root remembered
    gone = tmp_path / "unplugged"
    ctx.catalog.remember_roots([str(gone)], "watch")

    assert forget_root(ctx, str(photos / "trip")) == 2  # not remembered, but it has files
    assert forget_root(ctx, str(gone)) == 0  # remembered, no files, no folder
    assert ctx.catalog.known_roots() == []
    for unknown in (tmp_path / "elsewhere", photos / "trip"):
        with pytest.raises(UnknownRootError, match="not a root this index remembers"):
            forget_root(ctx, str(unknown))
    assert ctx.catalog.count_under(str(photos)) == 6 and ctx.vectors.count() == 6


@pytest.mark.slow
def test_index_then_reindex_without_roots_covers_the_indexed_folder(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for seed in range(3):
        write_photo(photos / f"p{seed}.jpg", seed)
    nothing = imgwatch(tmp_path, "reindex")
    assert nothing.returncode == 1 and b"`imgwatch index ROOT`" in nothing.stderr

    _json(imgwatch(tmp_path, "index", str(photos), "--json"))
    (photos / "p1.jpg").unlink()
    result = imgwatch(tmp_path, "reindex", "--json")

    report = _json(result)
    assert report["outcome"] == "ok"
    assert (report["counts"]["files_removed"], report["counts"]["files_unchanged"]) == (1, 2)
    assert f"imgwatch: using the roots this index remembers: {photos}\n".encode() in result.stderr


@pytest.mark.slow
def test_status_lists_the_roots_and_forget_removes_one_with_its_files(tmp_path: Path) -> None:
    photos, other = tmp_path / "photos", tmp_path / "other"
    for seed in range(3):
        write_photo(photos / f"p{seed}.jpg", seed)
    query = write_photo(other / "o.jpg", 7).read_bytes()
    _json(imgwatch(tmp_path, "index", str(photos), str(other), "--json"))
    shutil.rmtree(other)  # a remembered root that went missing stays remembered, entries kept

    roots = _json(imgwatch(tmp_path, "status", "--json"))["roots"]
    assert [(r["path"], r["command"], r["exists"]) for r in roots] == [
        (str(other), "index", False),
        (str(photos), "index", True),
    ]
    assert roots[0]["added_at"] <= roots[0]["last_used_at"]
    text = imgwatch(tmp_path, "status").stdout
    assert f"root:       {photos} (indexed {roots[1]['last_used_at'][:10]}, exists)".encode() in text
    assert f"root:       {other} (indexed ".encode() in text and b", missing)" in text
    refused = imgwatch(tmp_path, "reindex")  # the missing root is passed on: nothing is deleted
    assert refused.returncode == 1 and f"{other} (missing)".encode() in refused.stderr
    assert _json(imgwatch(tmp_path, "status", "--json"))["files"]["indexed"] == 4

    assert _json(imgwatch(tmp_path, "forget", str(other), "--json")) == {"root": str(other), "removed": 1}

    status = _json(imgwatch(tmp_path, "status", "--json"))
    assert [r["path"] for r in status["roots"]] == [str(photos)]
    assert (status["files"]["indexed"], status["vectors"]) == (3, 3)
    (tmp_path / "query.jpg").write_bytes(query)
    [line] = _json_lines(imgwatch(tmp_path, "search", str(tmp_path / "query.jpg"), "--json"))
    assert {Path(r["path"]).parent for r in line["results"]} == {photos}
    unknown = imgwatch(tmp_path, "forget", str(tmp_path / "nowhere"))
    assert unknown.returncode == 1
    assert (
        f"imgwatch: error: {tmp_path / 'nowhere'} is not a root this index remembers".encode()
        in unknown.stderr
    )


@pytest.mark.slow
def test_watch_without_roots_watches_the_remembered_ones(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    photos, more = tmp_path / "photos", tmp_path / "more"
    write_photo(photos / "a.jpg", 1)
    write_photo(more / "b.jpg", 2)
    _json(imgwatch(tmp_path, "index", str(photos), "--json"))

    daemon = daemon_factory()  # `imgwatch watch` with no ROOT, no config file

    assert [r["path"] for r in daemon.status()["roots"]] == [str(photos)]
    assert f"using the roots this index remembers: {photos}".encode() in daemon.log.read_bytes()
    assert _json(imgwatch_cli(data, "index", str(more), "--json"))["added"] == 1  # through the daemon
    roots = gather_status(Settings(data_dir=data, weights="random:0"))["roots"]
    assert [(r["path"], r["command"]) for r in roots] == [(str(more), "index"), (str(photos), "watch")]
    refused = imgwatch_cli(data, "forget", str(photos))  # the daemon watches it: not behind its back
    assert refused.returncode == 1 and f"cannot forget {photos}".encode() in refused.stderr
    assert b"stop watching it" in refused.stderr
    # A root the daemon does not watch is forgotten through it, vectors and all.
    forgotten = _json(imgwatch_cli(data, "forget", str(more), "--json"))
    assert forgotten == {"root": str(more), "removed": 1}
    assert str(more / "b.jpg") not in daemon.paths_found(more / "b.jpg")
    assert daemon.stop() == 0
