"""``imgwatch migrate`` while the daemon serves: the daemon copies, searches keep answering, the files
added, changed, moved and deleted meanwhile reach the new store; a daemon killed mid-copy resumes.

Real parts: the suite's Milvus server, Milvus Lite, the real daemon (tests/harness.py) and CLI.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgwatch.services.vectors import MilvusVectorStore
from tests.conftest import MilvusServer, write_photo
from tests.harness import RunningDaemon, disk_images, wait_progressing, wait_until
from tests.test_migrate import Library, _through

pytestmark = [pytest.mark.slow, pytest.mark.milvus_server]

SIZE = (64, 48)


@pytest.fixture
def library(tmp_path: Path, milvus_server: MilvusServer) -> Iterator[Library]:
    """A data dir with a collection of its own on the server, dropped afterwards."""
    from pymilvus import MilvusClient

    lib = Library(tmp_path / "data", milvus_server)
    yield lib
    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token or "")
    try:
        client.drop_collection(lib.collection)
    finally:
        client.close()


def _photos(root: Path, distinct: int, copies: int) -> list[Path]:
    """``distinct`` photos and ``copies`` byte copies of them: the copies reuse the vector (content
    hash), so the library has rows enough for many batches at the price of ``distinct`` model runs."""
    photos = [write_photo(root / f"p{seed}.jpg", seed, SIZE) for seed in range(distinct)]
    for n in range(copies):
        shutil.copyfile(photos[n % distinct], root / f"c{n}.jpg")
    return photos


def _catalog(data_dir: Path) -> dict[int, str]:
    """Catalog id -> path of the files with vectors, read by another process as a user would."""
    with closing(sqlite3.connect(f"file:{data_dir / 'catalog.sqlite3'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT id, path FROM files WHERE has_vector = 1 AND state = 'indexed'").fetchall()
    return {int(i): bytes(p).decode() if isinstance(p, bytes) else str(p) for i, p in rows}


def _server_store(library: Library) -> MilvusVectorStore:
    return MilvusVectorStore(
        library.server.uri, dimension=4096, collection=library.collection, token=library.server.token
    )


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The migrate commands a test started: none is left running after it, even when it fails."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _start_migrate(
    started: list[subprocess.Popen[bytes]], library: Library, to: str, *options: str
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "imgwatch", "migrate", "--to", to, "--json", *options],
        env=library.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    started.append(process)
    return process


def _finished(process: subprocess.Popen[bytes], daemon: RunningDaemon) -> dict[str, Any]:
    """The migrate command's JSON once it ends; waits as long as the daemon's copy progresses."""
    wait_progressing(
        lambda: process.poll() is not None, lambda: (daemon.status()["migration"] or {}).get("done")
    )
    out, err = process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def _migration(daemon: RunningDaemon) -> dict[str, Any]:
    return dict(daemon.status()["migration"] or {})


def _finds(daemon: RunningDaemon, path: Path) -> bool:
    """Whether the daemon's search with ``path``'s bytes (a model run) finds it with score 1."""
    return any(h["path"] == str(path) and h["score"] > 0.999 for h in daemon.search(path, k=30))


def _like(daemon: RunningDaemon, path: Path) -> dict[str, float]:
    """The daemon's search by ``path``'s stored vector (no model run): path -> score."""
    [result] = daemon.client.search_like([str(path)], 30)
    return {hit["path"]: hit["score"] for hit in result.get("results", [])}


def _indexed(daemon: RunningDaemon, path: Path) -> bool:
    """Whether the daemon holds ``path``'s vector (asked by it: no model run)."""
    [result] = daemon.client.search_like([str(path)], 1)
    return "error" not in result


def _change_seconds(daemon: RunningDaemon, root: Path) -> float:
    """How long this machine's daemon takes to index one new photo: the copy below is paced by it."""
    started = time.monotonic()
    probe = write_photo(root / "probe.jpg", 99, SIZE)
    wait_until(lambda: _indexed(daemon, probe), timeout=120, interval=0.05)
    daemon.idle()
    return time.monotonic() - started


def test_the_daemon_moves_its_index_to_the_server_and_back_while_serving(
    daemon_factory: Callable[..., RunningDaemon],
    library: Library,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    root = tmp_path / "photos"
    _photos(root, distinct=4, copies=12)
    daemon = daemon_factory(root, data_dir=library.data_dir, env=library.env)
    daemon.idle()
    took = _change_seconds(daemon, root)
    rows = len(_catalog(library.data_dir))
    assert rows == 17  # 16 photos and the probe; below, one is added and one deleted
    # One vector per batch, paced so that the copy lasts several times what the live changes take
    # on this machine: they land between batches, not after the copy.
    pause = max(0.2, 6 * took / rows)
    runs = daemon.idle()["model_runs"]

    # The files that change are the first three the copy takes: copied before they change, so that
    # only the mirrored writes can bring their changes to the server.
    modified, deleted, moved_from = (Path(p) for _, p in sorted(_catalog(library.data_dir).items())[:3])
    old_content = modified.read_bytes()
    changing = (modified, deleted, moved_from)
    # Files that stay as they are: one with the old content of the modified file, one beside the moved.
    twin = next(p for p in sorted(root.glob("*.jpg")) if p.read_bytes() == old_content and p not in changing)
    sibling = next(p for p in sorted(root.glob("*.jpg")) if p not in changing)
    moved = root / "moved.jpg"

    process = _start_migrate(
        started, library, library.server.uri, "--batch-size", "1", "--pause", f"{pause:.2f}"
    )
    wait_until(lambda: _migration(daemon).get("done", 0) >= 4, timeout=120, interval=0.05)
    added = write_photo(root / "added.jpg", 50, SIZE)
    write_photo(modified, 51, SIZE)  # new content: its old vector must not survive
    deleted.unlink()
    moved_from.rename(moved)
    # Searches answer meanwhile (from the old store), and see the changes as they are handled.
    wait_until(
        lambda: (
            _indexed(daemon, added)
            and str(moved) in _like(daemon, sibling)
            and str(deleted) not in _like(daemon, twin)
            and _like(daemon, twin).get(str(modified), 1.0) < 0.999  # twin: the old content
        ),
        timeout=120,
        interval=0.1,
    )
    during = _migration(daemon)
    assert during["phase"] == "copying" and during["done"] < during["total"], during  # interleaved
    assert during["mirrored_writes"] >= 3, during
    text = library.run("status").stdout.decode()
    assert "migration:  copying, " in text and f"files -> {library.server.uri}" in text, text

    result = _finished(process, daemon)
    catalog = _catalog(library.data_dir)
    assert result["total"] == len(catalog) == rows and result["missing_in_source"] == []
    assert daemon.process.poll() is None
    assert daemon.idle()["model_runs"] == runs + 2  # the added and the modified file, nothing else
    assert _migration(daemon)["phase"] == "done"
    status = library.json("status")
    assert status["milvus_uri"] == library.server.uri and status["vectors"] == len(catalog)

    # The server holds exactly the catalog's files, each under its path: a new store opened here.
    server = _server_store(library)
    try:
        assert server.all_ids() == set(catalog)
        assert {key: server.ids_for_path(path) for key, path in catalog.items()} == {
            key: [key] for key in catalog
        }
    finally:
        server.close()
    assert set(catalog.values()) == disk_images(root)
    # Every photo finds itself (the daemon serves from the server now), the modified one by its
    # new content only.
    for path in disk_images(root):
        assert _finds(daemon, Path(path)), path
    assert not any(h["path"] == str(modified) and h["score"] > 0.999 for h in daemon.search(twin, 30))

    # And back to the data dir's Milvus Lite file, with a change while it copies.
    process = _start_migrate(started, library, "lite", "--batch-size", "2", "--pause", f"{pause:.2f}")
    wait_until(lambda: _migration(daemon).get("target", "").endswith("vectors.db"), timeout=60)
    wait_until(lambda: _migration(daemon).get("done", 0) >= 2, timeout=120, interval=0.05)
    late = write_photo(root / "late.jpg", 60, SIZE)
    wait_until(lambda: _indexed(daemon, late), timeout=120, interval=0.1)
    back = _finished(process, daemon)
    catalog = _catalog(library.data_dir)
    # The Lite copy held the entities mirrored up to the first switch; the deleted one is gone.
    assert back["total"] == len(catalog) and back["removed_from_target"] == 0
    status = library.json("status")
    assert status["milvus_uri"] == str(library.data_dir / "vectors.db")
    assert status["vectors"] == len(catalog)
    for photo in (late, modified, added, moved):
        assert _finds(daemon, photo), photo
    assert daemon.stop() == 0


def test_a_daemon_killed_mid_copy_resumes_and_recopies_what_changed_meanwhile(
    daemon_factory: Callable[..., RunningDaemon],
    library: Library,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    root = tmp_path / "photos"
    _photos(root, distinct=3, copies=13)
    daemon = daemon_factory(root, data_dir=library.data_dir, env=library.env)
    daemon.idle()
    process = _start_migrate(started, library, library.server.uri, "--batch-size", "1", "--pause", "0.2")
    try:
        wait_until(lambda: (_through(library.data_dir) or 0) >= 8, timeout=120, interval=0.02)
    finally:
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and b"resumes it" in err, err
    through = _through(library.data_dir)
    assert through is not None and through < max(_catalog(library.data_dir))

    # A file already copied changes while no daemon copies: `imgwatch index` re-extracts it.
    catalog = _catalog(library.data_dir)
    key = min(catalog)
    changed = Path(catalog[key])
    server = _server_store(library)
    try:
        old = server.get_vectors([key])[key]
    finally:
        server.close()
    write_photo(changed, 77, SIZE)
    assert library.json("index", str(root))["updated"] == 1
    lite = MilvusVectorStore(
        str(library.data_dir / "vectors.db"), dimension=4096, collection=library.collection
    )
    try:
        new = lite.get_vectors([key])[key]
    finally:
        lite.close()
    assert not np.allclose(old, new)

    # Given again, to a daemon started afresh: it resumes after the recorded id and copies the
    # changed row again, although it lies below that id.
    daemon = daemon_factory(root, data_dir=library.data_dir, env=library.env)
    daemon.idle()
    resumed = _finished(_start_migrate(started, library, library.server.uri), daemon)
    assert resumed["resumed_after"] == through and resumed["recopied"] >= 1
    assert resumed["total"] == len(catalog)
    assert daemon.stop() == 0
    server = _server_store(library)
    try:
        assert server.all_ids() == set(catalog)
        assert np.allclose(server.get_vectors([key])[key], new, atol=1e-6)
    finally:
        server.close()
    assert library.json("status")["milvus_uri"] == library.server.uri
