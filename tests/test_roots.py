"""The roots an index remembers (migration 0005): ``reindex`` and ``watch`` without arguments,
``status`` listing them. Real catalog, Milvus Lite, VGG16."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from imgwatch.config import Settings
from imgwatch.status import gather_status
from tests.conftest import write_photo
from tests.test_cli import _json, imgwatch
from tests.test_daemon import RunningDaemon, daemon_factory, imgwatch_cli

__all__ = ["daemon_factory"]  # a fixture, used by name


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
def test_status_lists_the_remembered_roots_missing_ones_too(tmp_path: Path) -> None:
    photos, other = tmp_path / "photos", tmp_path / "other"
    for seed in range(3):
        write_photo(photos / f"p{seed}.jpg", seed)
    write_photo(other / "o.jpg", 7)
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
    assert daemon.stop() == 0
