"""Load what is needed: runs with nothing to extract never load VGG16, nor even import torch
(issue 17). Checked from outside the real processes: ``python -X importtime`` lists every module
``imgwatch index`` imported, and a running daemon's ``/proc/PID/maps`` shows whether libtorch is
mapped (and, under ``PYTHONPROFILEIMPORTTIME``, its log lists its imports). Each test also sees the
checks turn positive once the model runs, so they cannot pass blind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imgwatch.config import Settings
from imgwatch.services.abc import FileState
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from tests.conftest import write_photo
from tests.harness import RunningDaemon, assert_agree, cli_env

SMALL = (64, 48)


def _index(
    data_dir: Path, root: Path, env: dict[str, str] | None = None
) -> tuple[dict[str, object], set[str]]:
    """``imgwatch index ROOT --json`` under ``-X importtime``: its summary, and the modules it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgwatch", "index", str(root), "--json"],
        env=cli_env(data_dir),
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return json.loads(result.stdout), _imported(result.stderr.decode())


def _imported(importtime: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    return {
        line.rsplit("|", 1)[1].strip() for line in importtime.splitlines() if line.startswith("import time:")
    }


def _torch_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in {"torch", "torchvision"}}


def _milvus_modules(modules: set[str]) -> set[str]:
    """Opening the vector store imports these (Milvus Lite then loads every vector into the process)."""
    return {m for m in modules if m.split(".")[0] in {"pymilvus", "milvus_lite"}}


def _libtorch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _stored_vector(data_dir: Path, path: Path) -> np.ndarray:  # type: ignore[type-arg]
    with open_context(Settings(data_dir=data_dir, weights="random:0"), command="test", model=False) as ctx:
        record = ctx.catalog.get(str(path))
        assert record is not None and record.state is FileState.INDEXED
        return ctx.vectors.get_vectors([record.id])[record.id]


def test_index_with_nothing_to_extract_never_imports_torch(tmp_path: Path, extractor: VGG16Extractor) -> None:
    root, data = tmp_path / "photos", tmp_path / "data"
    for seed in range(4):
        write_photo(root / f"p{seed}.jpg", seed, size=SMALL)
    first, modules = _index(data, root)
    assert (first["added"], first["model_runs"]) == (4, 4)
    assert _torch_modules(modules)  # the check sees torch when the model runs
    assert _milvus_modules(modules)  # and Milvus when vectors are stored

    # Nothing to do: neither the model nor the vector store is opened (the catalog knows the size
    # that decides the ANN index, so the pending-reindex check needs no store either).
    unchanged, modules = _index(data, root)
    assert (unchanged["unchanged"], unchanged["model_runs"]) == (4, 0)
    assert not _torch_modules(modules)
    assert not _milvus_modules(modules)

    (root / "moved").mkdir()
    (root / "p0.jpg").rename(root / "moved" / "p0.jpg")
    (root / "p1.jpg").rename(root / "p1-renamed.jpg")
    (root / "p2.jpg").unlink()
    shutil.copyfile(root / "p3.jpg", root / "moved" / "p3-copy.jpg")  # a copy of indexed content
    changed, modules = _index(data, root)
    assert (changed["moved"], changed["removed"], changed["added"], changed["model_runs"]) == (2, 1, 1, 0)
    assert not _torch_modules(modules)
    assert _milvus_modules(modules)  # the deletion and the copy's vector need the store

    # Moves alone touch only the catalog: the store is not opened, and the vector is the file's still.
    before = _stored_vector(data, root / "p1-renamed.jpg")
    (root / "p1-renamed.jpg").rename(root / "moved" / "p1.jpg")
    moved, modules = _index(data, root)
    assert (moved["moved"], moved["added"], moved["removed"], moved["model_runs"]) == (1, 0, 0, 0)
    assert not _milvus_modules(modules)
    assert np.array_equal(_stored_vector(data, root / "moved" / "p1.jpg"), before)

    # A new image afterwards: the model loads, and makes the vector an eagerly loaded one makes.
    new = write_photo(root / "new.jpg", seed=40, size=SMALL)
    added, modules = _index(data, root)
    assert (added["added"], added["model_runs"]) == (1, 1)
    assert _torch_modules(modules)
    assert float(np.dot(_stored_vector(data, new), extractor.embed(new.read_bytes()))) > 0.9999
    assert_agree(data, root)


def test_an_unreachable_server_stops_index_before_the_model_loads(tmp_path: Path) -> None:
    """The store is opened lazily, but ``index`` with work to do still contacts it first: a server that
    refuses connections fails the run before torch is imported, and the root is not remembered."""
    import socket

    from imgwatch.services.catalog import open_catalog

    root, data = tmp_path / "photos", tmp_path / "data"
    write_photo(root / "new.jpg", 1, size=SMALL)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = cli_env(data) | {"IMGWATCH_MILVUS_URI": f"http://127.0.0.1:{port}"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgwatch", "index", str(root)],
        env=env,
        capture_output=True,
        check=False,
        timeout=300,
    )
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert f"cannot open the vector store at http://127.0.0.1:{port}" in stderr
    assert _milvus_modules(_imported(stderr))  # it did try the store...
    assert not _torch_modules(_imported(stderr))  # ...before anything loaded the model
    catalog = open_catalog(data / "catalog.sqlite3")
    try:
        assert catalog.root_records() == []
    finally:
        catalog.close()


def test_a_model_that_cannot_load_stops_index_with_its_error(tmp_path: Path) -> None:
    root, data = tmp_path / "photos", tmp_path / "data"
    write_photo(root / "a.jpg", seed=1, size=SMALL)
    write_photo(root / "b.jpg", seed=2, size=SMALL)
    weights = tmp_path / "vgg16.pt"
    weights.write_bytes(b"not a state dict" * 64)

    result = subprocess.run(
        [sys.executable, "-m", "imgwatch", "index", str(root)],
        env=cli_env(data) | {"IMGWATCH_WEIGHTS": str(weights)},
        capture_output=True,
        check=False,
        timeout=300,
    )

    # The message the same run gave when it loaded the model at start, and the fatal exit status.
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert (
        f"imgwatch: error: cannot load VGG16 weights from {weights}: not a PyTorch state-dict file" in stderr
    )
    assert "Traceback" not in stderr  # said once, not once per file that was waiting for the model
    settings = Settings(data_dir=data, weights=str(weights))
    with open_context(settings, command="test", model=False) as ctx:
        counts = ctx.catalog.counts()
        # Not the files' fault: none is failed, and those reached stay pending for the next run.
        assert counts[FileState.FAILED] == counts[FileState.INDEXED] == 0
        assert ctx.vectors.count() == 0
        # Nothing claims that these weights made the index: fixed settings then just work.
        assert ctx.catalog.get_meta("extractor_signature") is None
    fixed = subprocess.run(
        [sys.executable, "-m", "imgwatch", "index", str(root), "--json"],
        env=cli_env(data),
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert fixed.returncode == 0, fixed.stderr.decode()
    assert json.loads(fixed.stdout)["model_runs"] == 2


@pytest.mark.slow
def test_daemon_on_an_unchanged_tree_loads_no_model_until_a_new_image(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path, extractor: VGG16Extractor
) -> None:
    root, data = tmp_path / "photos", tmp_path / "data"
    for seed in range(3):
        write_photo(root / f"p{seed}.jpg", seed, size=SMALL)
    first, _ = _index(data, root)
    assert first["added"] == 3

    # PYTHONPROFILEIMPORTTIME lists the daemon's imports in its log, and, being read at start-up, it
    # makes the harness exec the daemon rather than fork it from a process that has imported torch.
    daemon = daemon_factory(root, data_dir=data, env={"PYTHONPROFILEIMPORTTIME": "1"})
    status = daemon.idle()  # its start-up scan found everything unchanged
    assert (status["model_runs"], status["model_loaded"]) == (0, False)
    assert not _libtorch_mapped(daemon.process.pid)
    assert _imported(daemon.log.read_text())  # the log does list imports ...
    assert not _torch_modules(_imported(daemon.log.read_text()))  # ... and none of torch

    (root / "p0.jpg").rename(root / "p0-moved.jpg")
    shutil.copyfile(root / "p1.jpg", root / "p1-copy.jpg")
    status = daemon.idle()
    assert status["outcomes"].get("moved") == 1 and status["outcomes"].get("added") == 1
    assert (status["model_runs"], status["model_loaded"]) == (0, False)
    assert not _libtorch_mapped(daemon.process.pid)
    assert not _torch_modules(_imported(daemon.log.read_text()))

    new = write_photo(root / "new.jpg", seed=41, size=SMALL)
    status = daemon.idle()
    assert (status["model_runs"], status["model_loaded"]) == (1, True)
    assert _libtorch_mapped(daemon.process.pid)  # the checks see the model once it is loaded
    assert _torch_modules(_imported(daemon.log.read_text()))
    assert daemon.stop() == 0
    assert float(np.dot(_stored_vector(data, new), extractor.embed(new.read_bytes()))) > 0.9999
    assert_agree(data, root)


def test_the_daemon_opens_its_store_behind_status_and_searches_wait_for_it(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    """``watch`` opens the vector store in a thread of its own once it runs: at 100,000 4096-d vectors
    Milvus Lite loads for about 30 s, which status and an unchanged tree's catch-up need not wait for.
    Until it is open, status counts no vectors and says so; a search waits for it, then answers."""
    root, data = tmp_path / "photos", tmp_path / "data"
    photo = write_photo(root / "a.jpg", seed=1, size=SMALL)
    write_photo(root / "b.jpg", seed=2, size=SMALL)
    _index(data, root)
    daemon = daemon_factory(root, data_dir=data)
    first = daemon.status()
    assert first["store"] in {"opening", "open"}
    assert (first["vectors"] is None) == (first["store"] == "opening"), first
    [best, *_] = daemon.search(photo, k=2)
    assert best["path"] == str(photo)
    status = daemon.idle()
    assert status["store"] == "open" and status["vectors"] == 2, status
    assert "vector store open (collection" in daemon.log.read_text()


def test_an_unreachable_server_stops_the_daemon_with_its_error(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    """Opened in the background, a store that cannot be opened still stops ``watch`` with the error
    and the exit status of an eager open (systemd restarts it: tests/test_systemd.py)."""
    import socket

    from imgwatch.cli import EXIT_FATAL

    root = tmp_path / "photos"
    write_photo(root / "new.jpg", 1, size=SMALL)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    daemon = daemon_factory(root, env={"IMGWATCH_MILVUS_URI": uri}, wait=False)
    assert daemon.process.wait(timeout=300) == EXIT_FATAL
    assert f"cannot open the vector store at {uri}" in daemon.log.read_text()
