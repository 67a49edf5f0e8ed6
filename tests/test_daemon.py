"""The real daemon as a subprocess on real folders: real Milvus Lite, SQLite, VGG16 (seeded weights)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgwatch.config import Settings
from imgwatch.daemon import SHUTDOWN_TIMEOUT_S
from imgwatch.events import ImageDeleted, Source
from imgwatch.reindex import SWITCH_WHEN_LEFT
from imgwatch.samples import photo
from imgwatch.services.build import open_context
from imgwatch.services.catalog import open_catalog
from imgwatch.services.extractor import VGG16Extractor
from tests.conftest import index, jpeg_bytes, write_photo
from tests.harness import (
    RunningDaemon,
    assert_agree,
    disk_images,
    imgwatch_cli,
    wait_progressing,
    wait_until,
)

pytestmark = pytest.mark.slow


def _seen(daemon: RunningDaemon, condition: Callable[[], bool]) -> dict[str, Any]:
    """Until the daemon shows a change, then until it is idle: ``idle()`` alone can return before a
    loaded machine has delivered the change's inotify events at all."""
    wait_until(condition, timeout=120, interval=0.2)
    return daemon.idle()


def _indexed(daemon: RunningDaemon, path: Path) -> bool:
    """Whether the daemon has ``path``'s vector, asked by its stored vector: no model run counted."""
    [result] = daemon.client.search_like([str(path)], 1)
    return "error" not in result  # "not in the index", or in it without a vector yet


def test_files_and_directories_follow_the_disk(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    write_photo(root / "start.jpg", seed=1)
    daemon = daemon_factory(root)
    daemon.idle()

    # A dropped file becomes searchable; the CLI's search goes through the daemon.
    dropped = write_photo(root / "dropped.jpg", seed=2)
    wait_until(lambda: str(dropped) in daemon.paths_found(dropped, k=1), timeout=30)
    cli = imgwatch_cli(daemon.data_dir, "search", str(dropped), "-k", "1", "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["results"][0]["path"] == str(dropped)
    status = imgwatch_cli(daemon.data_dir, "status", "--json")
    assert json.loads(status.stdout)["daemon"]["running"] is True

    # A file written slowly, in chunks, is read once, when complete.
    runs = daemon.idle()["model_runs"]
    data = jpeg_bytes(photo(3))
    slow = root / "slow.jpg"
    with slow.open("wb") as f:
        for start in range(0, len(data), len(data) // 4 + 1):
            f.write(data[start : start + len(data) // 4 + 1])
            f.flush()
            time.sleep(0.3)
    _seen(daemon, lambda: _indexed(daemon, slow))
    assert daemon.model_runs() == runs + 1
    assert daemon.search(data, k=1)[0] == {"path": str(slow), "score": pytest.approx(1.0, abs=1e-3)}

    # "Write a temporary name, then rename into place" is one new file.
    runs = daemon.model_runs()
    temporary = root / "saved.jpg.part"
    temporary.write_bytes(jpeg_bytes(photo(4)))
    temporary.rename(root / "saved.jpg")
    _seen(daemon, lambda: _indexed(daemon, root / "saved.jpg"))
    assert daemon.model_runs() == runs + 1
    assert daemon.paths_found(root / "saved.jpg").count(str(root / "saved.jpg")) == 1

    # Renames of files and directories keep their vectors: no model runs.
    write_photo(root / "album" / "a.jpg", seed=5)
    inner = write_photo(root / "album" / "inner" / "b.jpg", seed=6)
    _seen(daemon, lambda: _indexed(daemon, inner))
    runs = daemon.model_runs()
    (root / "dropped.jpg").rename(root / "renamed.jpg")
    (root / "album").rename(root / "album-2024")
    moved, renamed = root / "album-2024" / "inner" / "b.jpg", root / "renamed.jpg"
    status = _seen(daemon, lambda: _indexed(daemon, moved) and _indexed(daemon, renamed))
    assert status["model_runs"] == runs
    found = daemon.paths_found(root / "album-2024" / "inner" / "b.jpg")
    assert str(root / "album-2024" / "inner" / "b.jpg") in found
    assert not any("/album/" in p for p in found)
    assert daemon.paths_found(root / "renamed.jpg", k=1) == [str(root / "renamed.jpg")]

    # A deleted file and a deleted directory disappear from results.
    (root / "renamed.jpg").unlink()
    shutil.rmtree(root / "album-2024")
    _seen(daemon, lambda: not _indexed(daemon, renamed) and not _indexed(daemon, moved))
    found = daemon.paths_found(jpeg_bytes(photo(2)))
    assert str(root / "renamed.jpg") not in found
    assert not any("album" in p for p in found)
    assert sorted(found) == sorted(disk_images(root))

    # `imgwatch index` while the daemon runs hands the work to it, and reports its summary.
    runs = daemon.model_runs()
    index = imgwatch_cli(daemon.data_dir, "index", str(root), "--json")
    assert index.returncode == 0, index.stderr
    assert json.loads(index.stdout)["unchanged"] == len(disk_images(root))
    assert daemon.model_runs() == runs

    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_a_burst_of_files_is_indexed_exactly_once(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "burst"
    root.mkdir()
    daemon = daemon_factory(root)
    daemon.idle()  # the start-up scan is over: every event from now on is the burst's
    # What makes a burst is files arriving much faster than the model reads them: several times the
    # handler pool (twice the batch size, + 4) and the model's batch at once. More files only cost
    # model time.
    files = 3 * Settings().workers
    staging = tmp_path / "staging"
    for seed in range(files):
        write_photo(staging / f"{seed:03d}.jpg", seed=1000 + seed, size=(64, 48))
    for path in sorted(staging.iterdir()):
        shutil.copy(path, root / path.name)  # create, write, close, chmod: several events each

    status = daemon.idle()

    assert status["model_runs"] == files
    # Each file handled once: a second handling of a file would count as "unchanged" (or "updated").
    assert status["outcomes"] == {"added": files}
    assert status["vectors"] == files
    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_sigterm_stops_cleanly_in_bounded_time(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    write_photo(root / "a.jpg", seed=1)
    daemon = daemon_factory(root)
    # Work in progress when the signal arrives: files being read and files waiting for the pool.
    files = 2 * Settings().workers
    for seed in range(files):
        write_photo(root / f"b{seed}.jpg", seed=100 + seed, size=(64, 48))
    wait_until(lambda: daemon.status()["queue"]["in_flight"], timeout=60, interval=0.02)

    started = time.monotonic()
    code = daemon.stop()

    assert code == 0
    assert time.monotonic() - started < SHUTDOWN_TIMEOUT_S
    # What it had not finished is picked up by the next start.
    again = daemon_factory(root)
    again.idle()
    assert again.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_a_journal_row_this_version_cannot_read_does_not_stop_the_daemon(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    write_photo(root / "a.jpg", seed=1)
    catalog_path = tmp_path / "data" / "catalog.sqlite3"
    catalog = open_catalog(catalog_path)
    try:
        readable = catalog.journal_append(ImageDeleted(str(root / "gone.jpg"), source=Source.FILESYSTEM))
    finally:
        catalog.close()
    with sqlite3.connect(catalog_path) as db:  # as a newer imgwatch might have left it
        odd = db.execute(
            "INSERT INTO journal (kind, path, source, occurred_at, attempts)"
            " VALUES ('ImageTeleported', ?, 'filesystem', '2024-05-01 12:00:00.000000', 0)",
            (os.fsencode(root / "b.jpg"),),
        ).lastrowid
    db.close()

    daemon = daemon_factory(root)
    status = daemon.idle()

    assert status["journal"]["pending"] == 0 and status["journal"]["unreadable"] == 1
    assert status["vectors"] == 1  # and it went on to index the root
    assert f"journal row {odd} (kind 'ImageTeleported'" in daemon.log.read_text()
    assert daemon.stop() == 0
    with sqlite3.connect(catalog_path) as db:
        rows = dict(db.execute("SELECT id, done_at FROM journal").fetchall())
    db.close()
    assert rows[odd] is None  # left for a version that knows what it means
    assert rows[readable] is not None  # and the row before it was replayed


def test_a_removed_root_deletes_nothing(daemon_factory: Callable[..., RunningDaemon], tmp_path: Path) -> None:
    root = tmp_path / "disk"
    for seed in range(8):
        write_photo(root / f"{seed}.jpg", seed=400 + seed, size=(96, 72))
    daemon = daemon_factory(root)
    before = daemon.idle()["vectors"]
    assert before == 8
    backup = tmp_path / "backup"
    shutil.copytree(root, backup)

    shutil.rmtree(root)  # the disk went away

    status = wait_until(lambda: (s := daemon.status())["roots"][0]["guard"] and s, timeout=30)
    time.sleep(2)
    status = daemon.status()
    assert status["vectors"] == 8
    assert "missing" in status["roots"][0]["guard"]
    assert len(daemon.paths_found(backup / "0.jpg")) == 8

    shutil.copytree(backup, root)  # ...and came back
    wait_until(lambda: daemon.status()["roots"][0]["guard"] is None, timeout=30)
    assert daemon.idle()["vectors"] == 8
    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_a_second_daemon_on_the_same_data_dir_is_refused(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    daemon = daemon_factory(root)

    second = imgwatch_cli(daemon.data_dir, "watch", str(root))

    assert second.returncode == 1
    assert f"PID {daemon.process.pid} (imgwatch watch)".encode() in second.stderr
    assert daemon.process.poll() is None


def test_ten_rewrites_in_a_second_are_extracted_once(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    daemon = daemon_factory(root)
    runs = daemon.idle()["model_runs"]
    target = root / "edited.jpg"

    versions = [jpeg_bytes(photo(600 + version)) for version in range(10)]
    for data in versions:  # ten saves in half a second
        target.write_bytes(data)
        time.sleep(0.05)

    daemon.idle()
    assert daemon.model_runs() == runs + 1
    assert daemon.search(jpeg_bytes(photo(609)), k=1)[0] == {
        "path": str(target),
        "score": pytest.approx(1.0, abs=1e-3),
    }


def test_moves_between_two_roots_keep_their_vectors(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_photo(first / "a.jpg", seed=700)
    write_photo(first / "album" / "b.jpg", seed=701)
    write_photo(first / "album" / "c.jpg", seed=702)
    second.mkdir()
    daemon = daemon_factory(first, second)
    runs = daemon.idle()["model_runs"]
    assert runs == 3

    (first / "a.jpg").rename(second / "a.jpg")
    (first / "album").rename(second / "album")
    status = daemon.idle()

    assert status["model_runs"] == runs
    assert status["vectors"] == 3
    assert daemon.paths_found(second / "album" / "c.jpg", k=1) == [str(second / "album" / "c.jpg")]
    assert not any(str(first) + os.sep in p for p in daemon.paths_found(second / "a.jpg"))
    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, tmp_path)


def test_a_mass_deletion_is_held_and_the_daemon_lives_on(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for seed in range(10):
        write_photo(root / f"{seed}.jpg", seed=1500 + seed, size=(64, 48))
    # The guard's own threshold (20 files by default) lowered, so that ten files make a mass deletion.
    daemon = daemon_factory(root, env={"IMGWATCH_MASS_DELETE_MIN_FILES": "6"})
    assert daemon.idle()["vectors"] == 10

    for seed in range(8):  # 8 of 10 files vanish at once: more like a failing disk than a user
        (root / f"{seed}.jpg").unlink()

    status = wait_until(lambda: (s := daemon.status())["roots"][0]["guard"] and s, timeout=30)
    assert re.fullmatch(r"\d+ of its 10 files vanished at once", status["roots"][0]["guard"])
    status = daemon.idle()
    assert status["vectors"] == 10
    assert daemon.process.poll() is None
    # An explicit index of the root is the confirmation: it applies the deletions.
    index = imgwatch_cli(daemon.data_dir, "index", str(root), "--json")
    assert json.loads(index.stdout)["removed"] == 8
    assert daemon.status()["roots"][0]["guard"] is None
    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_delete_then_write_anew_keeps_the_new_file(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    target = write_photo(root / "edited.jpg", seed=1600)
    daemon = daemon_factory(root)
    daemon.idle()

    target.rename(root / "edited.jpg.bak")  # what some editors do on save...
    target.write_bytes(jpeg_bytes(photo(1601)))  # ...before writing the new version

    daemon.idle()
    assert daemon.search(jpeg_bytes(photo(1601)), k=1)[0] == {
        "path": str(target),
        "score": pytest.approx(1.0, abs=1e-3),
    }
    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_new_weights_reindex_in_the_background_while_searches_answer(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path, extractor: VGG16Extractor
) -> None:
    root = tmp_path / "photos"
    # Enough files for the build to run batches beside the searches before its switch takes the rest.
    files = 2 * SWITCH_WHEN_LEFT
    for seed in range(files):
        write_photo(root / f"{seed:02d}.jpg", seed, (64, 48))
    # Indexed with the old weights in this process (the session's model), as `imgwatch index` would.
    with open_context(
        Settings(data_dir=tmp_path / "data", weights="random:0"), command="test", extractor=extractor
    ) as ctx:
        assert index(ctx, root).added == files

    daemon = daemon_factory(root, extra=("--weights", "random:1"))
    probe = root / "07.jpg"
    phases: list[str] = []
    reindex: dict[str, Any] = {}

    def switched() -> bool:
        nonlocal reindex
        reindex = daemon.status()["reindex"] or {}
        # Searches answer all along: from the old collection, then from the new one.
        assert daemon.paths_found(probe, k=1) == [str(probe)]
        phases.append(reindex.get("phase", "not started"))
        return reindex.get("phase") == "done"

    # As long as it takes here (loading the new model, the build): it fails only when nothing moves.
    wait_progressing(switched, lambda: (reindex.get("phase"), reindex.get("done")), interval=0.05)
    assert "building" in phases
    status = daemon.idle()
    assert status["reindex"]["vectors"] == files
    assert status["jobs"]  # the run is recorded like the other maintenance jobs
    assert daemon.stop() == 0

    settings = Settings(data_dir=daemon.data_dir, weights="random:1")
    with open_context(settings, command="test", model=False) as ctx:
        records = ctx.catalog.ids_with_vectors()
        assert len(records) == files
        assert {r.signature for r in records.values()} == {ctx.extractor.signature.key}
        assert ctx.extractor.signature.weights == "random:1"
        assert ctx.vectors.all_ids() == set(records)
        assert ctx.vectors.collections() == ["imgwatch_1"]
    status_cli = json.loads(imgwatch_cli(daemon.data_dir, "status", "--json").stdout)
    assert status_cli["jobs"]["reindex"]["last_run"]["outcome"] == "ok"


def test_more_like_this_and_duplicates_go_through_the_daemon(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for seed in range(4):
        write_photo(root / f"p{seed}.jpg", seed)
    (root / "p1-copy.jpg").write_bytes(jpeg_bytes(photo(1, (480, 360)), quality=30))
    daemon = daemon_factory(root)
    daemon.idle()
    runs = daemon.model_runs()
    (root / "p1.jpg").chmod(0)  # the daemon's copy of the vector is all --like needs

    like = imgwatch_cli(tmp_path / "data", "search", "--like", str(root / "p1.jpg"), "-k", "2", "--json")
    dups = imgwatch_cli(tmp_path / "data", "duplicates", "--threshold", "0.99", "--json")

    assert like.returncode == 0, like.stderr
    [line] = [json.loads(x) for x in like.stdout.splitlines()]
    assert line["results"][0]["path"] == str(root / "p1-copy.jpg")
    assert str(root / "p1.jpg") not in [r["path"] for r in line["results"]]
    assert dups.returncode == 0, dups.stderr
    assert [g["paths"] for g in json.loads(dups.stdout)["groups"]] == [
        [str(root / "p1-copy.jpg"), str(root / "p1.jpg")]
    ]
    assert daemon.model_runs() == runs  # neither ran the model
    assert daemon.stop() == 0
