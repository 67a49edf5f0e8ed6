"""A cold ``imgwatch search`` (no daemon) skips what one query does not need (issue 16).

Checked without timings, from outside real processes: ``python -X importtime`` lists every module the
command imported. On a catalog already at the newest revision Alembic (and the Mako templates it
brings) is never imported; a catalog at an older revision still is, and is upgraded; one at a revision
this imgwatch does not know is still refused by Alembic. The model's modules load in a thread of their
own beside the stores: a command that fails while that thread imports torch still reports and exits
as before. Cycle collection is off only while the search runs. Whole-process times are measured by
hand (docs/notes-cold-search.md), not asserted.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from imgwatch.commands.exits import exit_status
from imgwatch.errors import DataDirBusyError
from imgwatch.lock import DataDirLock
from imgwatch.migrations import alembic_config, downgrade
from imgwatch.services.catalog import create_sqlite_engine
from imgwatch.services.catalog_schema import SCHEMA_HEAD
from tests.conftest import write_photo
from tests.harness import cli_env, imgwatch_cli

#: Only Alembic's migrations need these; a catalog at the head revision must not import them.
MIGRATIONS = frozenset({"alembic", "mako"})


def cold_search(data_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """``imgwatch search ARGS`` as a fresh process (never a fork: its start-up is what is checked), and
    the top-level packages it imported, from its ``-X importtime`` report."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgwatch", "search", *args],
        env=cli_env(data_dir),
        capture_output=True,
        check=False,
        timeout=600,
    )
    lines = done.stderr.decode(errors="replace").splitlines()
    # "import time: <self us> | <cumulative us> | <indent><module>", one line per module imported.
    reported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    packages = {name.split(".")[0] for name in reported}
    assert "imgwatch" in packages, f"no import report: {done.stderr[-2000:]!r}"
    return done, packages


def catalog_revision(data_dir: Path) -> list[tuple[str]]:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchall()


def indexed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A data dir whose index holds two small photos (indexed by the real CLI), and the photos."""
    data_dir = tmp_path / "data"
    query = write_photo(tmp_path / "photos" / "a.jpg", 1, size=(64, 48))
    other = write_photo(tmp_path / "photos" / "b.jpg", 2, size=(64, 48))
    done = imgwatch_cli(data_dir, "index", str(query.parent), "--json")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert json.loads(done.stdout)["added"] == 2
    return data_dir, query, other


def test_the_schema_head_is_alembics() -> None:
    """A new migration must move SCHEMA_HEAD with it: a stale head would let catalogs at the old one
    skip the new migration."""
    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [SCHEMA_HEAD]


@pytest.mark.slow
def test_a_cold_search_on_a_current_catalog_imports_no_alembic_and_an_old_one_is_upgraded(
    tmp_path: Path,
) -> None:
    data_dir, query, other = indexed(tmp_path)

    done, modules = cold_search(data_dir, "--json", str(query))
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    answer = json.loads(done.stdout)
    assert [m["path"] for m in answer["results"]] == [str(query), str(other)]
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert {"torch", "sqlalchemy", "pymilvus"} <= modules  # the model and the stores did run here
    assert not modules & MIGRATIONS, sorted(modules & MIGRATIONS)

    # One revision back, as an older imgwatch left it (0006 only added a table): Alembic runs again.
    engine = create_sqlite_engine(data_dir / "catalog.sqlite3")
    downgrade(engine, "0005")
    engine.dispose()
    assert catalog_revision(data_dir) == [("0005",)]
    again, modules = cold_search(data_dir, "--json", str(query))
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-2000:]
    assert json.loads(again.stdout) == answer
    assert modules >= MIGRATIONS
    assert catalog_revision(data_dir) == [(SCHEMA_HEAD,)]


@pytest.mark.slow
def test_a_catalog_from_a_newer_imgwatch_is_still_refused(tmp_path: Path) -> None:
    data_dir, query, _ = indexed(tmp_path)
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:  # as a newer imgwatch might have left it
        db.execute("UPDATE alembic_version SET version_num = '0099'")

    done, modules = cold_search(data_dir, str(query))
    assert done.returncode == 1
    assert b"Can't locate revision identified by '0099'" in done.stderr
    assert done.stdout == b""
    assert "alembic" in modules
    assert catalog_revision(data_dir) == [("0099",)]


@pytest.mark.slow
def test_a_cold_search_that_fails_while_torch_loads_reports_and_exits_as_before(tmp_path: Path) -> None:
    """The data dir is held by another command: the search stops at the lock, an instant after its
    model thread began importing torch, with the usual message and status, and nothing else (no
    traceback, no crash of the thread at exit)."""
    data_dir, query, _ = indexed(tmp_path)
    lock = DataDirLock(data_dir, "index").acquire()
    try:
        done, modules = cold_search(data_dir, str(query))
    finally:
        lock.release()
    expected = DataDirBusyError(data_dir, os.getpid(), "index")
    assert done.returncode == exit_status(expected)
    errors = [line for line in done.stderr.decode().splitlines() if not line.startswith("import time:")]
    assert errors == [f"imgwatch: error: {expected}"]
    assert done.stdout == b""
    assert "torch" in modules  # the thread did import it: the exit above came after, cleanly


def test_the_collector_is_off_only_while_a_search_runs_here_and_a_callers_choice_stands() -> None:
    """The cold search turns cycle collection off for its start-up and search, and back on after it,
    also when it fails, with what it made moved out of the youngest generation; a caller that had
    turned it off finds it off."""
    from imgwatch.commands.searching import _no_cycle_collection

    collections: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    assert gc.isenabled()
    with _no_cycle_collection():
        assert not gc.isenabled()
        made = [[] for _ in range(50_000)]  # what a start-up makes and keeps
        gc.callbacks.append(note)
    try:
        # Left in the youngest generation, these would be the first allocations to walk all of it.
        after = [[] for _ in range(100)]
    finally:
        gc.callbacks.remove(note)
    assert gc.isenabled()
    assert collections == [], "the first allocations after the search collected what it made"
    assert len(made) + len(after) == 50_100
    with pytest.raises(RuntimeError), _no_cycle_collection():
        raise RuntimeError("the search failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with _no_cycle_collection():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_command_leaves_what_it_made_out_of_the_exit_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interpreter's last collections walked every object a search made (about 1 s on 2 cores);
    # the console script and `python -m imgwatch` freeze them after the command, while a caller of
    # main() in its own process keeps its collector as it was.
    [script] = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "imgwatch"]
    assert script.value == "imgwatch.cli:run"
    probe = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.stderr))\n"
        "import runpy\n"
        "sys.argv = ['imgwatch', 'status', '--json']\n"
        "runpy.run_module('imgwatch', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "IMGWATCH_DATA_DIR": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert int(done.stderr.rsplit("frozen", 1)[1].split()[0]) > 1000, done.stderr

    from imgwatch.cli import main

    monkeypatch.setenv("IMGWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main(["status", "--json"]) == 0
    assert gc.get_freeze_count() == 0
