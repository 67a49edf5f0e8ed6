"""``imgwatch migrate``: the index from Milvus Lite to the real Milvus server and back, without a model
run; resumed after a SIGKILL mid-copy; verified; the data dir then uses the new store by itself.

Real parts: the suite's Milvus server (``milvus_server``), Milvus Lite files, the real CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgwatch.services.build import MIGRATION_META_KEY
from imgwatch.services.catalog import open_catalog
from imgwatch.services.vectors import MilvusVectorStore
from tests import forkserver
from tests.conftest import MilvusServer, fill_synthetic, write_photo
from tests.harness import cli_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.milvus_server]


class Library:
    """A data dir whose collection on the server is its own, and the commands on it."""

    def __init__(self, data_dir: Path, server: MilvusServer) -> None:
        self.data_dir = data_dir
        self.server = server
        self.collection = f"test_{uuid.uuid4().hex}"
        # The token as a user sets it for later runs; the store is wherever the data dir says.
        self.env = cli_env(data_dir) | {"IMGWATCH_COLLECTION": self.collection}
        if server.token:
            self.env["IMGWATCH_MILVUS_TOKEN"] = server.token

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        environ = env or self.env
        if forkserver.forkable(environ):
            return forkserver.run(args, environ, timeout=600)
        return subprocess.run(
            [sys.executable, "-m", "imgwatch", *args],
            env=environ,
            capture_output=True,
            check=False,
            timeout=600,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return json.loads(done.stdout.splitlines()[-1])

    def search(self, query: Path) -> list[tuple[str, float]]:
        """More like an indexed file, by its stored vector: the store's answer, without a model run."""
        result = self.json("search", "--like", str(query), "-k", "10")
        return [(m["path"], round(m["score"], 4)) for m in result["results"]]


@pytest.fixture
def library(tmp_path: Path, milvus_server: MilvusServer) -> Iterator[Library]:
    lib = Library(tmp_path / "data", milvus_server)
    yield lib
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token or "")
    try:
        client.drop_collection(lib.collection)
    finally:
        client.close()


def test_to_the_server_and_back_without_a_model_run(library: Library, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photos = [write_photo(root / f"p{seed}.jpg", seed, size=(96, 72)) for seed in range(6)]
    assert library.json("index", str(root))["added"] == 6
    before = library.search(photos[2])
    lite_file = library.data_dir / "vectors.db"

    moved = library.json("migrate", "--to", library.server.uri)
    assert (moved["total"], moved["copied"], moved["resumed_after"]) == (6, 6, 0)
    assert moved["verified_sample"] == 6 and moved["missing_in_source"] == []
    status = library.json("status")
    assert status["milvus_uri"] == library.server.uri and status["vectors"] == 6
    # The same answers from the server; the Lite copy is left as it was.
    assert library.search(photos[2]) == before
    assert lite_file.exists()
    # Writes go to the server now: a file deleted is gone there, not in the old Lite copy.
    os.unlink(photos[5])
    assert library.json("index", str(root))["removed"] == 1
    server = MilvusVectorStore(
        library.server.uri, dimension=4096, collection=library.collection, token=library.server.token
    )
    try:
        assert server.count() == 5
    finally:
        server.close()

    # Settings naming another store are refused, with what to do.
    elsewhere = library.run("status", env=library.env | {"IMGWATCH_MILVUS_URI": str(tmp_path / "other.db")})
    assert elsewhere.returncode == 0  # status reports, it does not refuse
    refused = library.run(
        "search", str(photos[0]), env=library.env | {"IMGWATCH_MILVUS_URI": str(tmp_path / "x.db")}
    )
    assert refused.returncode == 78 and b"imgwatch migrate" in refused.stderr, refused.stderr

    # And back: the old Lite copy still holds the deleted file's vector, which the copy removes.
    back = library.json("migrate", "--to", "lite")
    assert (back["total"], back["removed_from_target"]) == (5, 1)
    status = library.json("status")
    assert status["milvus_uri"] == str(lite_file) and status["vectors"] == 5
    assert library.search(photos[2]) == [hit for hit in before if hit[0] != str(photos[5])]
    again = library.run("migrate", "--to", "lite")
    assert again.returncode == 1 and b"already" in again.stderr


def _add_synthetic_rows(data_dir: Path, collection: str, n: int) -> None:
    """``n`` more indexed files with random vectors, made as the real photo's rows are: enough to
    make a copy take several batches."""
    catalog = open_catalog(data_dir / "catalog.sqlite3")
    store = MilvusVectorStore(str(data_dir / "vectors.db"), dimension=4096, collection=collection)
    try:
        vectors = np.random.default_rng(0).standard_normal((n, 4096)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        real = catalog.get(str(data_dir.parent / "photos" / "p0.jpg"))
        assert real is not None and real.signature is not None
        fill_synthetic(catalog, store, vectors, first_id=1000, signature=real.signature)
    finally:
        store.close()
        catalog.close()


def _through(data_dir: Path) -> int | None:
    """The last catalog id the unfinished copy recorded, read by another process as a user would."""
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'catalog.sqlite3'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (MIGRATION_META_KEY,)).fetchone()
    return int(json.loads(row[0])["through"]) if row else None


def test_a_copy_killed_midway_resumes_where_it_stopped(library: Library, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_photo(root / "p0.jpg", 0, size=(96, 72))
    assert library.json("index", str(root))["added"] == 1
    _add_synthetic_rows(library.data_dir, library.collection, 4000)

    process = subprocess.Popen(
        [sys.executable, "-m", "imgwatch", "migrate", "--to", library.server.uri],
        env=library.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Killed once some batches, not all, are recorded as copied.
        wait_until(lambda: (_through(library.data_dir) or 0) >= 1500, timeout=300, interval=0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err
    through = _through(library.data_dir)
    assert through is not None and through < 4999
    # Not moved yet: the data dir still uses the Lite store.
    assert library.json("status")["milvus_uri"] == str(library.data_dir / "vectors.db")

    resumed = library.json("migrate", "--to", library.server.uri)
    assert resumed["resumed_after"] == through
    assert resumed["total"] == 4001 and resumed["copied"] < 4001
    status = library.json("status")
    assert status["milvus_uri"] == library.server.uri and status["vectors"] == 4001
