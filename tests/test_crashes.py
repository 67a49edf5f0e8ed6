"""kill -9 of the real daemon process: at random instants during ingest, and in the middle of a shadow
reindex.

SIGKILL, not a cooperative flag: nothing of the daemon runs after it, so all that the next start has is
what was durable at that instant (the journal and the catalog in SQLite, Milvus Lite's files)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgwatch.config import Settings
from imgwatch.ipc import DaemonUnavailableError
from imgwatch.lock import lock_holder
from imgwatch.reindex import BATCH, SWITCH_WHEN_LEFT
from imgwatch.search import search_images
from imgwatch.services.build import REINDEX_META_KEY, open_context
from imgwatch.services.catalog import open_catalog
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.services.ledger import ReindexLedger
from tests.conftest import index, write_photo
from tests.harness import RunningDaemon, assert_agree, cli_env, imgwatch_cli, wait_progressing, wait_until

pytestmark = pytest.mark.slow
# What to replay a failure with: shown under "Captured log call" when a test fails.
log = logging.getLogger(__name__)

KILLS = 20
ENV_SEED = "IMGWATCH_CRASH_SEED"
"""Replays another sequence of kills and changes (the default one is fixed)."""
ENV_TIMELINE = "IMGWATCH_CRASH_TIMELINE"
"""Replays the instants of a reported run: the timeline it measured (six numbers) instead of a new one."""
SIZE = (64, 48)  # VGG16 sees 224x224 whatever the size: small files only make writing and decoding cheap

Factory = Callable[..., RunningDaemon]


# ---- kill -9 at random instants during ingest -------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One change to the root, after a pause: a new photo, a rename (of a file or folder), a deletion."""

    pause_s: float
    kind: str
    path: Path
    to: Path | None = None
    seed: int = 0

    def apply(self) -> None:
        if self.kind == "write":
            write_photo(self.path, self.seed, SIZE)
        elif self.kind == "move":
            assert self.to is not None
            self.path.rename(self.to)
        else:
            self.path.unlink()


def plan_round(rng: random.Random, root: Path, number: int) -> tuple[list[Change], list[Change]]:
    """The changes of one round: made while the daemon is down (found by its start-up scan), and made
    while it runs (inotify events, journalled as they arrive): new files, renames, deletions, a new
    folder, and a folder renamed."""
    moved, gone, moved_live, gone_live = rng.sample(sorted(root.glob("*.jpg")), 4)
    seed = 10_000 + 100 * number
    down = [Change(0, "write", root / f"w{number:02d}-{j}.jpg", seed=seed + j) for j in range(3)]
    down += [Change(0, "move", moved, root / f"m{number:02d}.jpg"), Change(0, "delete", gone)]
    folder = root / f"d{number:02d}"
    live = [Change(0, "write", root / f"l{number:02d}-{j}.jpg", seed=seed + 10 + j) for j in range(3)]
    live += [Change(0, "write", folder / f"{j}.jpg", seed=seed + 20 + j) for j in range(2)]
    live += [Change(0, "move", moved_live, root / f"k{number:02d}.jpg"), Change(0, "delete", gone_live)]
    if (root / f"d{number - 1:02d}").is_dir():
        live.append(Change(0, "move", root / f"d{number - 1:02d}", root / f"e{number - 1:02d}"))
    rng.shuffle(live)
    # Pauses of up to a quarter of a second: the changes overlap the daemon's handling of the earlier ones.
    return down, [Change(rng.uniform(0, 0.25), c.kind, c.path, c.to, c.seed) for c in live]


class Observer:
    """Watches a daemon from outside while a round runs, in a thread: when it held the data dir's lock,
    when it first answered and first ran the model, and its last status (``None`` until it answers)."""

    def __init__(self, daemon: RunningDaemon, started: float) -> None:
        self._daemon = daemon
        self._started = started
        self._stop = threading.Event()
        self.last: dict[str, Any] | None = None
        self.locked_s: float | None = None
        self.answered_s: float | None = None
        self.first_run_s: float | None = None
        self.answered = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="crash-observer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self._started
            # Only this daemon can hold it: the one before it is dead (the kernel released its lock).
            if self.locked_s is None and lock_holder(self._daemon.data_dir) is not None:
                self.locked_s = now
            try:
                self.last = self._daemon.status()
            except DaemonUnavailableError:
                pass  # not answering yet, or killed mid-request
            else:
                if self.answered_s is None:
                    self.answered_s = now
                    self.answered.set()
                if self.first_run_s is None and self.last["model_runs"]:
                    self.first_run_s = now
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


class Writer:
    """Makes a round's live changes in a thread, once the daemon answers (as it would see a user's);
    once the daemon is killed, the rest at once (changes made while it is down). Records when it made
    its first and last change."""

    def __init__(self, changes: list[Change], observer: Observer, started: float) -> None:
        self._changes = changes
        self._observer = observer
        self._started = started
        self.killed = threading.Event()
        self.first_s: float | None = None
        self.last_s: float | None = None
        self._thread = threading.Thread(target=self._write, name="crash-writer", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while not (self._observer.answered.wait(0.05) or self.killed.is_set()):
            pass
        for change in self._changes:
            self.killed.wait(change.pause_s)
            change.apply()
            self.last_s = time.monotonic() - self._started
            self.first_s = self.first_s if self.first_s is not None else self.last_s

    def active(self) -> bool:
        return self.first_s is not None and self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(timeout=600)


def activity(status: dict[str, Any] | None, writing: bool) -> str:
    """What the daemon was doing by its last answer before the kill, and whether files were changing."""
    if status is None:
        doing = ["start-up"]  # catalog, journal replay, watches: the control socket comes last
    else:
        # The vector store opens in the background after the socket answers: still starting.
        queue, doing = status["queue"], ["start-up"] if status["store"] == "opening" else []
        doing += ["scan"] if queue["scanning"] else []
        doing += ["extraction"] if queue["in_flight"] else []
        doing += (
            ["events waiting"] if queue["waiting"] or queue["ordered"] or status["journal"]["pending"] else []
        )
    doing += ["files changing"] if writing else []
    return "+".join(doing) or "idle"


def durable_state(catalog: Path) -> dict[str, int]:
    """What the killed daemon left behind: journal rows to replay, rows caught between pending and indexed."""
    with sqlite3.connect(catalog) as db:
        journal = db.execute("SELECT count(*) FROM journal WHERE done_at IS NULL").fetchone()[0]
        pending = db.execute("SELECT count(*) FROM files WHERE state = 'pending'").fetchone()[0]
    db.close()
    return {"journal_left": int(journal), "pending_rows": int(pending)}


@dataclass(frozen=True)
class Timeline:
    """Seconds after the start of the un-killed run: the phases that the kills are spread over."""

    locked: float
    """The daemon holds the data dir: from here on it may write (before: interpreter and imports)."""
    answered: float
    """Its control socket answers: start-up is nearly over (journal replayed, watches set; the vector
    store may still be opening, in the background)."""
    first_run: float
    """The model's first result: the start-up scan and the first reads are before it."""
    writes: float
    """The first live change (its events are journalled as they arrive)..."""
    writes_end: float
    """...and the last."""
    idle: float

    def phases(self) -> dict[str, tuple[str, float, float]]:
        """Each phase as ``(anchor, from, to)``: seconds after the killed daemon took the data dir's lock
        (start-up), or after it first answered (the rest): start-up takes longer with a backlog, and
        varies most."""
        after = self.answered
        return {
            # After this round's own lock: the interpreter's start varies most, and is not start-up.
            "start-up": ("locked", 0.0, max(self.answered - self.locked, 0.05)),
            "scan": ("answered", 0.0, max(self.first_run - after, 0.2)),
            "extraction": ("answered", self.first_run - after, self.idle - after),
            "journal writes": ("answered", self.writes - after, self.writes_end - after + 0.2),
        }


def run_round(
    daemon_factory: Factory,
    root: Path,
    down: list[Change],
    live: list[Change],
    kill: tuple[str, float] | None,
) -> tuple[Timeline | None, dict[str, Any]]:
    """Make ``down``, start the daemon, make ``live`` once it answers, and kill -9 it at ``kill``
    (``(anchor, seconds)``, see :meth:`Timeline.phases`). Without ``kill``: the un-killed run, stopped
    with SIGTERM once idle; returns its timeline. Else: what the kill hit."""
    for change in down:
        change.apply()
    started = time.monotonic()
    daemon = daemon_factory(root, wait=False)
    observer = Observer(daemon, started)
    writer = Writer(live, observer, started)
    try:
        if kill is None or kill[0] == "answered":
            wait_until(lambda: observer.answered.is_set() or daemon.process.poll() is not None, timeout=600)
            assert daemon.process.poll() is None, daemon.log.read_text()
            assert observer.answered_s is not None
        if kill is None:
            writer.join()
            daemon.idle()
            idle = time.monotonic() - started
            assert daemon.stop() == 0
            assert observer.locked_s is not None and observer.answered_s is not None
            assert writer.first_s is not None and writer.last_s is not None
            first_run = observer.first_run_s if observer.first_run_s is not None else idle
            measured = Timeline(
                observer.locked_s, observer.answered_s, first_run, writer.first_s, writer.last_s, idle
            )
            return measured, {}
        anchor, offset = kill
        if anchor == "locked":
            wait_until(
                lambda: observer.locked_s is not None or daemon.process.poll() is not None, timeout=600
            )
            assert daemon.process.poll() is None, daemon.log.read_text()
        anchors = {"answered": observer.answered_s, "locked": observer.locked_s}
        kill_at = offset + (anchors.get(anchor) or 0.0)
        time.sleep(max(0.0, started + kill_at - time.monotonic()))
        hit = activity(observer.last, writer.active())
        daemon.process.kill()
        daemon.process.wait()
        writer.killed.set()
        return None, {
            "at_s": round(kill_at, 2),
            "hit": hit,
            "model_runs": observer.last["model_runs"] if observer.last else None,
        }
    finally:
        writer.killed.set()
        writer.join()
        observer.stop()


def test_kill_9_at_20_random_instants_of_ingest_loses_and_doubles_nothing(
    daemon_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """20 kills, five in each phase of an un-killed run with the same kind of changes (start-up, the
    start-up scan, extraction, live changes being journalled), at random instants within the phase as
    that run measured it on this machine. Changes are made while the daemon is down (found by its
    start-up scan) and while it runs (seen through inotify). The seed
    (IMGWATCH_CRASH_SEED) and the measured timeline (IMGWATCH_CRASH_TIMELINE) are logged and written
    to ``crash-instants.json``; given both, a run replays the same changes at the same instants."""
    caplog.set_level(logging.INFO, logger=__name__)
    seed = int(os.environ.get(ENV_SEED, "14"))
    rng = random.Random(seed)
    root = tmp_path / "photos"
    for number in range(12):
        write_photo(root / f"s{number:02d}.jpg", 9000 + number, SIZE)
    catalog = tmp_path / "data" / "catalog.sqlite3"

    # A first start reads torch and the rest from a cold disk cache: seconds, which every later start
    # (killed ones included) skips, and the timeline below would be measured on it.
    (tmp_path / "warm").mkdir()
    warm = daemon_factory(tmp_path / "warm", data_dir=tmp_path / "warm-data")
    assert warm.stop() == 0
    down, live = plan_round(rng, root, 0)
    measured, _ = run_round(daemon_factory, root, down, live, None)
    assert measured is not None
    if os.environ.get(ENV_TIMELINE):
        measured = Timeline(*(float(x) for x in os.environ[ENV_TIMELINE].split(",")))
    timeline = ",".join(f"{value:.2f}" for value in dataclasses.astuple(measured))
    log.info("replay with %s=%d %s=%s", ENV_SEED, seed, ENV_TIMELINE, timeline)
    planned = [
        (phase, anchor, rng.uniform(start, end))
        for phase, (anchor, start, end) in measured.phases().items()
        for _ in range(KILLS // 4)
    ]
    rng.shuffle(planned)  # each round starts from whatever backlog the kills before it left

    kills: list[dict[str, Any]] = []
    for number, (phase, anchor, offset) in enumerate(planned, start=1):
        down, live = plan_round(rng, root, number)
        _, hit = run_round(daemon_factory, root, down, live, (anchor, offset))
        kill = {"round": number, "phase": phase, f"after_{anchor}_s": round(offset, 2), **hit}
        kill |= durable_state(catalog)
        kills.append(kill)
        log.info("kill -9: %s", json.dumps(kill))
    (tmp_path / "crash-instants.json").write_text(
        json.dumps({ENV_SEED: seed, ENV_TIMELINE: timeline, "kills": kills}, indent=1)
    )

    again = daemon_factory(root)
    status = again.idle()
    assert status["roots"][0]["guard"] is None
    assert again.stop() == 0
    assert_agree(again.data_dir, root)
    # The kills hit what they were aimed at: a daemon still starting, events journalled and not yet
    # handled, rows marked pending whose vector was not stored yet.
    assert any("start-up" in k["hit"].split("+") for k in kills), kills
    assert any(k["journal_left"] for k in kills), kills
    assert any(k["pending_rows"] for k in kills), kills


# ---- kill -9 in the middle of a shadow reindex ------------------------------------------------------


def _scores(results: list[dict[str, Any]]) -> dict[str, float]:
    return {r["path"]: float(r["score"]) for r in results}


def _same(answer: dict[str, float], expected: dict[str, float]) -> bool:
    return answer.keys() == expected.keys() and all(abs(answer[p] - expected[p]) < 2e-3 for p in expected)


def test_a_reindex_killed_mid_build_resumes_and_switches_without_redoing_work(
    daemon_factory: Factory, tmp_path: Path, extractor: VGG16Extractor, caplog: pytest.LogCaptureFixture
) -> None:
    """New weights make the daemon build a shadow collection; kill -9 while the build is part-way; the
    next start resumes the same build from its ledger and extracts only what was not recorded as done,
    then switches. Searches answer from the old collection until the switch, the new one after."""
    root = tmp_path / "photos"
    # The build reports its progress between batches: one full batch, then enough left to build on.
    files = BATCH + 2 * SWITCH_WHEN_LEFT
    for number in range(files):
        write_photo(root / f"{number:02d}.jpg", 3000 + number, SIZE)
    probe = root / "07.jpg"
    old = Settings(data_dir=tmp_path / "data", weights="random:0", batch_size=8)
    with open_context(old, command="test", extractor=extractor) as ctx:
        before = extractor.images_embedded
        index(ctx, root)
        assert extractor.images_embedded - before == files  # each file once with the old weights
        [result] = search_images([(str(probe), probe.read_bytes())], ctx, k=files)
        old_answer = {m.path: m.score for m in result.matches}
    new_weights = ("--weights", "random:1")

    # ---- the first try, killed part-way
    building = daemon_factory(root, extra=new_weights)
    reindex: dict[str, Any] = {}

    def part_way() -> bool:
        nonlocal reindex
        reindex = building.status()["reindex"] or {}
        if reindex.get("phase") == "building" and 0 < reindex["done"] < reindex["total"]:
            return True
        assert reindex.get("phase") in {None, "preparing", "building"}, f"built past the kill: {reindex}"
        if not reindex.get("done"):  # not once progress shows: the kill must come before the next batch
            assert _same(_scores(building.search(probe, k=files)), old_answer)
        return False

    wait_progressing(part_way, lambda: (reindex.get("phase"), reindex.get("done")), interval=0.02)
    building.process.kill()
    building.process.wait()
    catalog = open_catalog(old.catalog_path)
    try:
        at_kill = ReindexLedger(catalog).progress()
        meta = catalog.get_meta(REINDEX_META_KEY)
    finally:
        catalog.close()
    assert meta is not None
    collection = json.loads(meta)["collection"]
    caplog.set_level(logging.INFO, logger=__name__)
    log.info(
        "killed with %s/%s shown, %s recorded, building %s",
        reindex["done"],
        reindex["total"],
        at_kill,
        collection,
    )
    assert reindex["done"] <= at_kill["done"] < at_kill["total"] == files
    assert at_kill["failed"] == 0

    # ---- the next start: resumes, switches
    again = daemon_factory(root, extra=new_weights)
    by_old = 0  # searches answered by the old model and collection, in this process
    by_new: list[dict[str, float]] = []  # answers that may come from the new collection (at the switch)
    reindex = {}

    def switched() -> dict[str, Any] | None:
        nonlocal reindex, by_old
        status = again.status()
        reindex = status["reindex"] or {}
        if reindex.get("phase") == "done":
            return status
        answer = _scores(again.search(probe, k=files))
        after = again.status()
        if (after["reindex"] or {}).get("phase") in {None, "preparing", "building"}:
            # Before the switch: the old collection answers, and the old model ran for searches only
            # (nothing was indexed again with the old weights).
            assert _same(answer, old_answer)
            by_old += 1
            assert after["model_runs"] == by_old
        elif _same(answer, old_answer):
            by_old += 1
        else:
            by_new.append(answer)
        return None

    done = wait_progressing(switched, lambda: (reindex.get("phase"), reindex.get("done")), interval=0.02)
    # From the switch on, the serving model is the new one: its runs are the resumed build's, plus any
    # search it answered.
    resumed_runs = done["model_runs"] - len(by_new)
    assert done["reindex"]["collection"] == collection  # the same build, resumed, not a new one
    assert resumed_runs == files - at_kill["done"]  # only what the ledger did not have
    assert by_old > 0
    after_switch = _scores(again.search(probe, k=files))
    assert again.model_runs() == done["model_runs"] + 1
    assert again.stop() == 0

    new = Settings(data_dir=tmp_path / "data", weights="random:1")
    with open_context(new, command="test", model=False) as ctx:
        records = ctx.catalog.ids_with_vectors()
        assert {r.path for r in records.values()} == {str(p) for p in root.glob("*.jpg")}
        assert {r.signature for r in records.values()} == {done["reindex"]["target"]}
        assert ctx.extractor.signature.weights == "random:1"
        assert ctx.vectors.collections() == [collection]  # the old one dropped
        vectors = ctx.vectors.get_vectors(records)
        assert set(vectors) == set(records) == ctx.vectors.all_ids()
        assert ctx.catalog.get_meta(REINDEX_META_KEY) is None
        [probe_id] = [key for key, r in records.items() if r.path == str(probe)]
        new_answer = {records[key].path: float(np.dot(v, vectors[probe_id])) for key, v in vectors.items()}
    assert not _same(new_answer, old_answer)  # the two collections can be told apart by their answers
    assert _same(after_switch, new_answer)
    assert all(_same(answer, new_answer) for answer in by_new)


# ---- kill -9 in the middle of a batch of copies, moves or deletions --------------------------------

BIG = 2000
"""Files in the big change: eight chunks of imgwatch.batches.BATCH, so a kill can land between them."""


def _rows(catalog: Path, below: Path) -> tuple[int, int]:
    """(rows at or below ``below``, of which pending), read from outside as the process writes."""
    prefix = os.fsencode(str(below))
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute(
            "SELECT count(*), coalesce(sum(state = 'pending'), 0) FROM files WHERE path >= ? AND path < ?",
            (prefix + b"/", prefix + b"0"),
        ).fetchone()
    return int(rows[0]), int(rows[1])


def _kill_part_way(process: Any, catalog: Path, below: Path) -> tuple[int, int]:
    """SIGKILL ``process`` as soon as the catalog below ``below`` shows a batch part-way: pending rows
    (a chunk of copies whose vectors are being stored), or some of the BIG files done and not all."""
    while process.poll() is None:
        try:
            seen = _rows(catalog, below)
        except sqlite3.OperationalError:  # not made yet, or busy for a moment
            continue
        rows, pending = seen
        if pending > 0 or 0 < rows < BIG:
            process.kill()
            process.wait()
            return seen
        time.sleep(0.002)
    raise AssertionError(f"the process ended (rc {process.returncode}) before the batch was seen part-way")


@pytest.mark.parametrize("operation", ["copies", "moves", "deletions"])
def test_kill_9_of_index_in_the_middle_of_a_batch_loses_and_doubles_nothing(
    operation: str, tmp_path: Path
) -> None:
    """``imgwatch index`` applies BIG copies (or moves, or deletions) a chunk at a time; it is killed
    with SIGKILL while the catalog shows them part-way (pending rows of a chunk whose vectors are being
    stored, or some chunks done and others not); the next ``index`` leaves every file once, in the
    catalog and in Milvus, and runs the model for none of them."""
    root, data = tmp_path / "photos", tmp_path / "data"
    catalog = data / "catalog.sqlite3"
    sources = [write_photo(root / "originals" / f"p{i}.jpg", i, SIZE) for i in range(4)]
    copies = [root / "copies" / f"c{i:05d}.jpg" for i in range(BIG)]
    if operation != "copies":
        for i, path in enumerate(copies):
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(sources[i % 4].read_bytes())
    assert imgwatch_cli(data, "index", str(root)).returncode == 0

    sub = root / "copies" / "sub"
    if operation == "copies":
        for i, path in enumerate(copies):
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(sources[i % 4].read_bytes())
        watched = root / "copies"
    elif operation == "moves":
        sub.mkdir()
        for path in copies:
            path.rename(sub / path.name)
        watched = sub
    else:
        for path in copies:
            path.unlink()
        watched = root / "copies"
    process = subprocess.Popen(
        [sys.executable, "-m", "imgwatch", "index", str(root)],
        env=cli_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows, pending = _kill_part_way(process, catalog, watched)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log.info("%s: killed with %d rows below %s, %d pending", operation, rows, watched, pending)
    assert process.returncode == -signal.SIGKILL

    again = imgwatch_cli(data, "index", str(root), "--json")
    assert again.returncode == 0, again.stderr.decode()
    summary = json.loads(again.stdout)
    assert summary["model_runs"] == 0, summary
    assert summary["failed"] == 0, summary
    assert_agree(data, root)


def test_kill_9_of_the_daemon_in_the_middle_of_a_batch_of_copies_loses_and_doubles_nothing(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """BIG copies of indexed content land under a running daemon, which stores them in batches; it is
    killed with SIGKILL while the catalog shows them part-way; the next start (journal replay and
    catch-up scan) leaves every file once, in the catalog and in Milvus, with no model run."""
    root, data = tmp_path / "photos", tmp_path / "data"
    sources = [write_photo(root / "originals" / f"p{i}.jpg", i, SIZE) for i in range(4)]
    daemon = daemon_factory(root)
    daemon.idle()
    (root / "copies").mkdir()
    for i in range(BIG):
        (root / "copies" / f"c{i:05d}.jpg").write_bytes(sources[i % 4].read_bytes())

    rows, pending = _kill_part_way(daemon.process, data / "catalog.sqlite3", root / "copies")
    log.info("daemon killed with %d rows below copies/, %d pending", rows, pending)

    again = daemon_factory(root)
    status = again.idle()
    assert status["model_runs"] == 0, status
    assert status["outcomes"].get("failed", 0) == 0, status
    assert again.stop() == 0
    assert_agree(data, root)
