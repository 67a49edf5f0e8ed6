"""Shared parts of the library-scale benchmark (``scale.py``): a photo library on disk, processes
measured for peak RSS, and a daemon measured for start-up, memory and inotify watches.

Builds on ``batched_writes.py`` (its environment, catalog reader and :class:`Daemon`), which it
imports and does not change.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batched_writes import Daemon, _catalog_paths, _disk, _env

from imgwatch.samples import photo

SIZE = (320, 240)
"""About 15 KB as a JPEG at quality 85: 100,000 files take about 1.5 GB."""
SOURCES = ("camera", "phone")
"""Top-level folders; the first holds the first half of the files, so renaming it moves N/2."""
EVENTS_PER_MONTH = 2


# ---- the library -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each of ``files`` files lives: ``SOURCE/YEAR/MONTH/event-K/IMG_NNNNNN.jpg``, with
    ``per_folder`` files per event folder and ``distinct`` contents (file ``i`` has content
    ``i % distinct``; every other file with that content is a byte copy)."""

    files: int
    distinct: int
    per_folder: int

    @property
    def folders(self) -> int:
        return math.ceil(self.files / self.per_folder)

    def folder(self, k: int) -> str:
        """Event folder ``k`` (of :attr:`folders`): the first half are the first source's."""
        half = math.ceil(self.folders / 2)
        source, j = (SOURCES[0], k) if k < half else (SOURCES[1], k - half)
        year, rest = divmod(j, 12 * EVENTS_PER_MONTH)
        month, event = divmod(rest, EVENTS_PER_MONTH)
        return os.path.join(source, str(2024 - year), f"{month + 1:02d}", f"event-{event + 1}")

    def path(self, i: int) -> str:
        return os.path.join(self.folder(i // self.per_folder), f"IMG_{i:06d}.jpg")

    def paths(self) -> list[str]:
        return [self.path(i) for i in range(self.files)]

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "distinct": self.distinct, "per_folder": self.per_folder}


def build_tree(layout: Layout, where: Path) -> tuple[Path, float, bool]:
    """``where/photos`` laid out as ``layout``: reused when ``where/tree.json`` says it was built
    with the same layout and the files are all there, built afresh otherwise. Returns the root,
    the seconds it took and whether it was reused."""
    started = time.monotonic()
    root, manifest = where / "photos", where / "tree.json"
    wanted = layout.as_dict()
    if manifest.exists() and json.loads(manifest.read_text()) == wanted and root.is_dir():
        on_disk = {os.path.relpath(p, root) for p in _disk(root)}
        if on_disk == set(layout.paths()):
            return root, time.monotonic() - started, True
    manifest.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    sources = where / "distinct"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    contents = []
    for seed in range(layout.distinct):
        path = sources / f"{seed:05d}.jpg"
        photo(seed, SIZE).save(path, "JPEG", quality=85)
        contents.append(path)
    made: set[Path] = set()
    for i, rel in enumerate(layout.paths()):
        target = root / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        # Real copies (not hard links): each is its own inode, as in a user's library.
        shutil.copyfile(contents[i % layout.distinct], target)
    manifest.write_text(json.dumps(wanted) + "\n")
    return root, time.monotonic() - started, False


def stat_walk(root: Path) -> tuple[float, int]:
    """A bare ``os.walk`` plus ``os.stat`` of every file: the floor any scan of the tree pays."""
    started = time.monotonic()
    n = 0
    for folder, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(folder, name))
            n += 1
    return time.monotonic() - started, n


def tree_bytes(root: Path) -> int:
    return sum(os.path.getsize(p) for p in _disk(root))


# ---- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    stdout: bytes
    stderr: str
    seconds: float
    peak_rss_mib: float
    """``ru_maxrss`` of this one child, from ``os.wait4`` (not ``RUSAGE_CHILDREN``, which is the
    largest child so far and would hide a smaller later one)."""


def measured(args: list[str], env: dict[str, str]) -> Finished:
    """Run ``args`` to the end; its whole wall time and its own peak RSS."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err)
        assert process.stdout is not None
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.stdout.close()
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args[2:])} failed ({process.returncode}): {stderr[-3000:]}")
    return Finished(out, stderr, seconds, usage.ru_maxrss / 1024)


def cli(data: Path, *args: str) -> Finished:
    return measured([sys.executable, "-m", "imgwatch", *args], _env(data))


def index(data: Path, root: Path) -> dict[str, Any]:
    """``imgwatch index ROOT --json``: its summary, the process's seconds and peak RSS."""
    done = cli(data, "index", str(root), "--json")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["process_s"] = round(done.seconds, 3)
    summary["peak_rss_mib"] = round(done.peak_rss_mib, 1)
    return summary


# ---- the daemon ------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _kib(value: str) -> float:
    return float(value.split(maxsplit=1)[0])


class MeasuredDaemon(Daemon):
    """``imgwatch watch ROOT`` from :mod:`batched_writes`, timed from its start, and a wait for
    "caught up" that stays cheap on a large tree: the catalog and the disk are compared only when
    the daemon says it is idle (and every few seconds, as a sign of progress)."""

    def __init__(self, data: Path, root: Path) -> None:
        self.started = time.monotonic()
        super().__init__(data, root)

    def answered(self) -> float:
        """When ``status`` first answers (``imgwatch status`` is this same socket call)."""
        while self._status() is None:
            time.sleep(0.05)
        return time.monotonic()

    def store_open(self) -> float:
        """When ``status`` first says the daemon's vector store is open (it loads in the background
        at start-up; searches wait for it)."""
        while (status := self._status()) is None or status.get("store") == "opening":
            time.sleep(0.1)
        return time.monotonic()

    def caught_up(self, stall_s: float = 300.0) -> float:
        """The monotonic time of the first status that found the daemon idle (nothing queued,
        running or journalled) and after which the catalog named exactly the files on disk.

        Fails only after ``stall_s`` without progress (outcomes, journal, queue, or catalog rows
        that match the disk, looked at every 5 s: a directory move reports no outcome until done).

        Asks for status at intervals of 2 % of the time waited so far (50 ms to 0.5 s), not every
        50 ms: each status counts the collection's vectors, which Milvus Lite does by walking all of
        them (py-spy: ``Collection.num_entities``), and polling at 20 Hz took about 40 % of the
        daemon's busy time during a directory move of 1,000 files.
        """
        last: object = None
        began = progress_at = looked_at = time.monotonic()
        matched = 0
        while True:
            asked = time.monotonic()
            status = self._status()
            if status is not None:
                busy = any(status["queue"].values()) or status["journal"]["pending"]
                if not busy and _catalog_paths(self.data) == _disk(self.root):
                    return asked
                if time.monotonic() - looked_at > 5:
                    catalog = _catalog_paths(self.data, pending_too=True)
                    matched = len(catalog & _disk(self.root)) if catalog is not None else matched
                    looked_at = time.monotonic()
                mark = (
                    sorted(status["outcomes"].items()),
                    status["journal"]["pending"],
                    sorted(status["queue"].items()),
                    matched,
                )
                if mark != last:
                    last, progress_at = mark, time.monotonic()
            if time.monotonic() - progress_at > stall_s:
                raise SystemExit(f"daemon made no progress for {stall_s} s: {status}")
            time.sleep(min(0.5, max(0.05, (time.monotonic() - began) / 50)))

    def memory(self) -> dict[str, float]:
        """The daemon's peak (VmHWM) and current (VmRSS) resident memory, MiB."""
        status = _proc_status(self.process.pid)
        return {
            "peak_rss_mib": round(_kib(status["VmHWM"]) / 1024, 1),
            "rss_mib": round(_kib(status["VmRSS"]) / 1024, 1),
        }

    def inotify_watches(self) -> int:
        """Watches the daemon holds, counted by the kernel: one ``inotify wd:`` line per watch in
        the fdinfo of each of its inotify descriptors."""
        pid, n = self.process.pid, 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    n += sum(line.startswith("inotify wd:") for line in f)
            except OSError:
                continue  # closed between the listing and the look
        return n

    def log_lines(self, *words: str) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if any(w in line for w in words)]
