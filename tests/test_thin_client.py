"""With a daemon running, the commands that ask it are thin clients of its socket.

``search``, ``search --like`` and ``index`` sent to the daemon, and ``status``, run as real processes
with ``python -X importtime``: the interpreter's own report of every module the command imported is
checked for the heavy libraries, while the answers show that the daemon gave them. No timings: the
machines differ; whole-process times are measured by hand, medians of repeated runs, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_photo
from tests.harness import RunningDaemon, cli_env

pytestmark = pytest.mark.slow

#: What a thin client must never load: the model's libraries, the catalog's, the vector store's.
HEAVY = frozenset({"torch", "torchvision", "sqlalchemy", "pymilvus", "numpy"})
#: What a command without a daemon may load but the model's: ``status`` reads the catalog then.
MODEL = frozenset({"torch", "torchvision"})
#: ``search`` and ``status`` find the data dir without the settings machinery (imgwatch.config.client).
SETTINGS = frozenset({"pydantic", "pydantic_settings", "pydantic_core"})


def run_with_importtime(data_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """The real command on ``data_dir``, and the top-level packages it imported (by the
    interpreter's ``-X importtime`` report on stderr)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgwatch", *args],
        env=cli_env(data_dir),
        capture_output=True,
        check=False,
        timeout=120,
    )
    lines = done.stderr.decode(errors="replace").splitlines()
    # "import time: <self us> | <cumulative us> | <indent><module>", one line per module imported.
    reported = [line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")]
    modules = {name.split(".")[0] for name in reported}
    assert "imgwatch" in modules, f"no import report: {done.stderr[-2000:]!r}"
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done, modules


def one_json(done: subprocess.CompletedProcess[bytes]) -> Any:
    [line] = done.stdout.splitlines()
    return json.loads(line)


def indexed_photos(tmp_path: Path, daemon_factory: Any) -> tuple[RunningDaemon, Path, Path]:
    root = tmp_path / "photos"
    query = write_photo(root / "a.jpg", 1, size=(64, 48))
    other = write_photo(root / "b.jpg", 2, size=(64, 48))
    daemon: RunningDaemon = daemon_factory(root)
    assert daemon.idle()["outcomes"] == {"added": 2}
    return daemon, query, other


def test_with_a_daemon_search_index_and_status_load_neither_model_nor_stores(
    tmp_path: Path, daemon_factory: Any
) -> None:
    daemon, query, other = indexed_photos(tmp_path, daemon_factory)
    data_dir = daemon.data_dir

    runs = daemon.model_runs()
    done, modules = run_with_importtime(data_dir, "search", "--json", str(query))
    answer = one_json(done)
    assert answer["query"] == str(query)
    assert [m["path"] for m in answer["results"]] == [str(query), str(other)]
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert daemon.model_runs() == runs + 1  # the daemon's model embedded the query, not this process
    assert not modules & (HEAVY | SETTINGS), sorted(modules & (HEAVY | SETTINGS))

    done, modules = run_with_importtime(data_dir, "search", "--like", "--json", str(query))
    assert [m["path"] for m in one_json(done)["results"]] == [str(other)]  # itself left out
    assert not modules & (HEAVY | SETTINGS), sorted(modules & (HEAVY | SETTINGS))

    done, modules = run_with_importtime(data_dir, "index", "--json", str(query.parent))
    result = one_json(done)
    assert (result["unchanged"], result["added"], result["failed"]) == (2, 0, 0)
    assert not modules & HEAVY, sorted(modules & HEAVY)

    (query.parent / "bad.jpg").write_bytes(b"not an image at all")
    daemon.idle()
    done, modules = run_with_importtime(data_dir, "status", "--json")
    report = one_json(done)
    live = report["daemon"]
    assert (live["running"], live["state"], live["pid"]) == (True, "running", daemon.process.pid)
    assert report["files"]["indexed"] == 2 and report["vectors"] == 2
    assert report["capacity"]["engine"] == "Milvus Lite" and report["capacity"]["vectors"] == 2
    # The whole report, the catalog's half too, comes from the daemon.
    assert not modules & (HEAVY | SETTINGS), sorted(modules & (HEAVY | SETTINGS))
    done, modules = run_with_importtime(data_dir, "status", "--failed", "--json")
    from_daemon = one_json(done)
    assert [f["path"] for f in from_daemon["failed_files"]] == [str(query.parent / "bad.jpg")]
    assert not modules & (HEAVY | SETTINGS), sorted(modules & (HEAVY | SETTINGS))

    assert daemon.stop() == 0
    done, modules = run_with_importtime(data_dir, "status", "--json")
    report = one_json(done)
    assert report["daemon"]["running"] is False
    assert report["files"]["indexed"] == 2 and report["vectors"] == 2  # read from the stores themselves
    assert not modules & MODEL, sorted(modules & MODEL)
    # What the daemon reported of the catalog is what the catalog itself says.
    failed = one_json(run_with_importtime(data_dir, "status", "--failed", "--json")[0])["failed_files"]
    assert from_daemon["failed_files"] == failed
    for key in ("data_dir", "catalog", "milvus_uri", "collection", "files", "extractor", "roots", "capacity"):
        assert from_daemon[key] == report[key], key
