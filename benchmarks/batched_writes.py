"""Copies, moves and deletes (no model run): files per second through ``imgwatch index`` and a daemon.

Builds N files in a few folders (200 distinct small contents, the rest byte copies), indexes them
once, then times whole operations, each from the moment of the change until the index agrees:
(a) N new byte copies of indexed content, then ``imgwatch index``; (b) those N moved into a
subfolder (``os.rename``), then ``index``; (c) those N deleted, then ``index``; (d) the same three
through a running ``imgwatch watch`` (until it is idle and the catalog names exactly the files on
disk); (e) a directory of ``--dir-files`` files renamed under a running daemon.

    python benchmarks/batched_writes.py                      # N = 2,000, directory of 10,000
    python benchmarks/batched_writes.py --files 20000 --dir-files 50000

Real parts throughout: Milvus Lite and SQLite in a temporary directory, VGG16 with ``random:0``
weights (only the 200 distinct contents ever run the model). Writes ``results/batched_writes.json``
and ``.md`` next to this file (``--tag`` names the run inside them, e.g. ``before``/``after``: runs
with other tags already there are kept) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.samples import photo

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DISTINCT = 200
FOLDERS = 5


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGWATCH_")}
    env |= {
        "IMGWATCH_WEIGHTS": "random:0",
        "IMGWATCH_DATA_DIR": str(data),
        "XDG_CONFIG_HOME": str(data / "cfg"),
        "PYTHONPATH": str(REPO),
    }
    return env


def _index(data: Path, root: Path) -> dict[str, Any]:
    """``imgwatch index ROOT --json`` as a process; its summary, plus the whole process's seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "imgwatch", "index", str(root), "--json"],
        env=_env(data),
        capture_output=True,
        check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"index failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["process_s"] = wall
    return summary


def _catalog_paths(data: Path, *, pending_too: bool = False) -> set[str] | None:
    """The catalog's paths; ``None`` if it cannot be read or (unless ``pending_too``) a row is not
    indexed."""
    try:
        with sqlite3.connect(f"file:{data / 'catalog.sqlite3'}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute("SELECT path, state FROM files").fetchall()
    except sqlite3.OperationalError:
        return None
    if not pending_too and any(state != "indexed" for _, state in rows):
        return None
    return {os.fsdecode(path) for path, _ in rows}


def _disk(root: Path) -> set[str]:
    return {os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(".jpg")}


def _agrees(data: Path, root: Path) -> bool:
    return _catalog_paths(data) == _disk(root)


class Daemon:
    def __init__(self, data: Path, root: Path) -> None:
        self.log = data.parent / "daemon.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imgwatch", "watch", str(root), "--log-level", "info"],
                env=_env(data),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.client = DaemonClient(data, timeout=60)
        self.data, self.root = data, root

    def _status(self) -> dict[str, Any] | None:
        if self.process.poll() is not None:
            raise SystemExit(f"daemon exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return self.client.status()
        except DaemonUnavailableError:
            return None

    def settled(self, stall_s: float = 300.0) -> float:
        """Wait until idle (nothing queued, running or journalled) and the catalog names exactly the
        files on disk; fails only after ``stall_s`` without progress (outcomes, journal, or catalog
        rows that match the disk: one directory move reports no outcome until it is done). Returns
        the monotonic time."""
        last: object = None
        progress_at = time.monotonic()
        while True:
            status = self._status()
            if status is not None:
                catalog, disk = _catalog_paths(self.data, pending_too=True), _disk(self.root)
                busy = any(status["queue"].values()) or status["journal"]["pending"]
                if not busy and _catalog_paths(self.data) == disk:
                    return time.monotonic()
                matched = len(catalog & disk) if catalog is not None else 0
                mark = (sorted(status["outcomes"].items()), status["journal"]["pending"], matched)
                if mark != last:
                    last, progress_at = mark, time.monotonic()
            if time.monotonic() - progress_at > stall_s:
                raise SystemExit(f"daemon made no progress for {stall_s} s: {status}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def _copies(sources: list[Path], where: Path, n: int) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        target = where / f"copy-{i:06d}.jpg"
        shutil.copyfile(sources[i % len(sources)], target)
        made.append(target)
    return made


def _move_all(files: list[Path], where: Path) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in files:
        target = where / path.name
        os.rename(path, target)
        moved.append(target)
    return moved


def _rate(n: int, seconds: float) -> dict[str, float]:
    return {
        "files": n,
        "seconds": round(seconds, 3),
        "files_per_s": round(n / seconds, 1) if seconds else 0.0,
    }


class Results(dict[str, Any]):
    """Each result is saved as it comes (``save``): a run stopped part-way still reports its phases."""

    def __init__(self, save: Any) -> None:
        super().__init__()
        self._save = save

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._save(self)


def run(n: int, dir_files: int, results: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="imgwatch-batches-") as scratch:
        root, data = Path(scratch) / "photos", Path(scratch) / "data"
        distinct = []
        for i in range(DISTINCT):
            path = root / f"folder-{i % FOLDERS}" / f"photo-{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(i, (64, 48)).save(path, "JPEG", quality=90)
            distinct.append(path)
        for i in range(DISTINCT, n):
            shutil.copyfile(distinct[i % DISTINCT], root / f"folder-{i % FOLDERS}" / f"photo-{i:04d}.jpg")
        first = _index(data, root)
        results["first_index"] = {**_rate(n, first["process_s"]), "model_runs": first["model_runs"]}

        # (a)-(c) through `imgwatch index`: the process's whole time, start-up included.
        made = _copies(distinct, root / "copies", n)
        copied = _index(data, root)
        assert copied["added"] == n and copied["model_runs"] == 0, copied
        results["index_copies"] = {**_rate(n, copied["process_s"]), "apply_s": copied["seconds"]}
        moved_files = _move_all(made, root / "copies" / "sub")
        moved = _index(data, root)
        assert moved["moved"] == n, moved
        results["index_moves"] = {**_rate(n, moved["process_s"]), "apply_s": moved["seconds"]}
        for path in moved_files:
            path.unlink()
        removed = _index(data, root)
        assert removed["removed"] == n, removed
        results["index_deletes"] = {**_rate(n, removed["process_s"]), "apply_s": removed["seconds"]}

        # The directory (e) moves: made and indexed before the daemon starts.
        big = _copies(distinct, root / "big" / "before", dir_files)
        assert _index(data, root)["added"] == len(big)

        # (d), (e) through a running daemon, from just before the change until idle and agreeing.
        daemon = Daemon(data, root)
        try:
            daemon.settled()
            started = time.monotonic()
            made = _copies(distinct, root / "dcopies", n)
            results["daemon_copies"] = _rate(n, daemon.settled() - started)
            started = time.monotonic()
            moved_files = _move_all(made, root / "dcopies" / "sub")
            results["daemon_moves"] = _rate(n, daemon.settled() - started)
            started = time.monotonic()
            for path in moved_files:
                path.unlink()
            results["daemon_deletes"] = _rate(n, daemon.settled() - started)
            started = time.monotonic()
            os.rename(root / "big" / "before", root / "big" / "after")
            results["daemon_directory_move"] = _rate(dir_files, daemon.settled() - started)
        finally:
            daemon.stop()
    return results


def _markdown(runs: dict[str, Any]) -> str:
    lines = ["### batched writes: copies, moves, deletes (no model run)", ""]
    for tag, run in runs.items():
        lines.append(
            f"- **{tag}**: {run['files']} files ({DISTINCT} distinct contents), directory of "
            f"{run['dir_files']}; {run['machine']}"
        )
    lines += ["", "| operation | " + " | ".join(f"{tag} files/s (s)" for tag in runs) + " |"]
    lines.append("| --- |" + " --- |" * len(runs))
    names = list(dict.fromkeys(name for run in runs.values() for name in run["results"]))
    for name in names:
        cells = []
        for run in runs.values():
            r = run["results"].get(name)
            cells.append(f"{r['files_per_s']:,} ({r['seconds']})" if r else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`index_*` count the whole `imgwatch index` process (start-up included; `apply_s` in the JSON is "
        "the part after the scan); `daemon_*` run from just before the change until the daemon is idle "
        "and the catalog names exactly the files on disk.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--dir-files", type=int, default=10_000)
    parser.add_argument("--tag", default="latest", help="the name of this run in the results (before/after)")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    machine = f"{os.cpu_count()} CPU cores, {cpu}, Python {platform.python_version()}"
    out = HERE / "results" / "batched_writes.json"
    runs: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}

    def save(results: dict[str, Any]) -> None:
        runs[args.tag] = {
            "files": args.files,
            "dir_files": args.dir_files,
            "machine": machine,
            "results": results,
        }
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(runs, indent=1) + "\n")
        (HERE / "results" / "batched_writes.md").write_text(_markdown(runs))

    run(args.files, args.dir_files, Results(save))
    print(_markdown(runs))


if __name__ == "__main__":
    main()
