"""Concurrent writes made together (services/group_commit.py): Milvus upserts and the catalog's
"indexed" marks from many handler threads share store calls, and each caller still returns only
once its own write is made, or raises its own error. Real Milvus (Lite and server) and real SQLite."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgwatch.services.abc import FileBlob, FileState
from imgwatch.services.catalog import open_catalog
from imgwatch.services.group_commit import GroupCommit
from imgwatch.services.vectors import MilvusVectorStore
from tests.conftest import unit_vector as _unit


class _Callers:
    """Threads that each make one write, their errors kept."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}

    def start(self, name: str, write: Callable[[], None]) -> None:
        def run() -> None:
            try:
                write()
            except Exception as e:  # noqa: BLE001 - the test looks at it
                self.errors[name] = e

        thread = threading.Thread(target=run, name=name, daemon=True)  # a hung one fails, not hangs, the run
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), thread.name


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _queue_behind_the_first(
    commit: GroupCommit[int],
    callers: _Callers,
    started: Callable[[], bool],
    count: int,
    first: Callable[[], None] | None = None,
) -> None:
    """``first`` (by default ``commit.write([0])``) in flight until the test lets it go, and then
    ``commit.write([n])`` for n = 1..count queued behind it, in that order."""
    callers.start("first", first or (lambda: commit.write([0])))
    _wait_until(started, "the first write")
    for n in range(1, count + 1):
        callers.start(f"c{n}", lambda n=n: commit.write([n]))
        _wait_until(lambda n=n: commit.queued == n, f"write {n} to queue")  # type: ignore[misc]


def _queue_behind_a_write(
    store: MilvusVectorStore, callers: _Callers, writes: dict[str, Callable[[], None]]
) -> None:
    """One upsert in flight, held on the store's write lock (which a delete or a drop takes too), and
    ``writes`` queued behind it in this order; then the lock is let go."""
    lock = store._write_lock
    with lock:
        callers.start("first", lambda: store.upsert([(1, "/first", _unit(1))]))
        _wait_until(lambda: store.upsert_stats.calls == 1, "the first upsert to reach the store")
        for queued, (name, write) in enumerate(writes.items(), start=1):
            callers.start(name, write)
            _wait_until(lambda n=queued: store._upserts.queued == n, f"{name} to queue")  # type: ignore[misc]
    callers.join()


def test_upserts_made_meanwhile_share_one_call_and_each_is_stored(store: MilvusVectorStore) -> None:
    callers = _Callers()
    writes: dict[str, Callable[[], None]] = {
        f"c{i}": (lambda i=i: store.upsert([(i, f"/p/{i}", _unit(i))])) for i in range(10, 18)
    }
    _queue_behind_a_write(store, callers, writes)

    assert callers.errors == {}
    stats = store.upsert_stats
    assert (stats.calls, stats.writes, stats.sizes) == (2, 9, {1: 1, 8: 1})
    stored = store.get_vectors([1, *range(10, 18)])
    assert set(stored) == {1, *range(10, 18)}
    for key, vector in stored.items():
        np.testing.assert_allclose(vector, _unit(key), atol=1e-6)


def test_an_upsert_the_store_refuses_fails_only_its_own_caller(store: MilvusVectorStore) -> None:
    callers = _Callers()
    writes: dict[str, Callable[[], None]] = {
        f"c{i}": (lambda i=i: store.upsert([(i, f"/p/{i}", _unit(i))])) for i in range(10, 14)
    }
    # A vector of the wrong dimension: Milvus refuses the whole call it is in.
    writes["bad"] = lambda: store.upsert([(99, "/p/bad", _unit(99, dim=7))])
    writes |= {f"c{i}": (lambda i=i: store.upsert([(i, f"/p/{i}", _unit(i))])) for i in range(14, 17)}
    _queue_behind_a_write(store, callers, writes)

    assert set(callers.errors) == {"bad"}
    stats = store.upsert_stats
    # The first alone; the eight queued together (refused); then each of the eight on its own.
    assert (stats.calls, stats.sizes) == (1 + 1 + 8, {1: 1, 8: 1})
    assert set(store.get_vectors([1, 99, *range(10, 17)])) == {1, *range(10, 17)}
    assert store.count() == 8


def test_one_key_written_twice_in_a_combined_call_keeps_the_later_write(store: MilvusVectorStore) -> None:
    callers = _Callers()
    writes: dict[str, Callable[[], None]] = {
        "earlier": lambda: store.upsert([(7, "/earlier", _unit(70))]),
        "later": lambda: store.upsert([(7, "/later", _unit(71))]),
    }
    _queue_behind_a_write(store, callers, writes)

    assert callers.errors == {}
    assert store.upsert_stats.sizes == {1: 1, 2: 1}
    np.testing.assert_allclose(store.get_vectors([7])[7], _unit(71), atol=1e-6)
    assert store.count() == 2


def test_rows_marked_indexed_meanwhile_share_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = open_catalog(path)
    try:
        records = [catalog.mark_pending(f"/p/{i}.jpg", 10 + i, 1000 + i) for i in range(9)]
        callers = _Callers()
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            # Another connection holds SQLite's write lock: the first mark waits on it (busy timeout),
            # the others queue behind that write.
            blocker.execute("BEGIN IMMEDIATE")
            for n, record in enumerate(records):
                blob = FileBlob(record.path, b"", record.size, record.mtime_ns, f"hash{n}")
                signature = "sig-a" if n % 2 else "sig-b"
                callers.start(f"c{n}", lambda r=record, b=blob, s=signature: catalog.mark_indexed(r.id, b, s))
                if n == 0:
                    _wait_until(lambda: catalog.mark_indexed_stats.calls == 1, "the first mark to start")
                else:
                    _wait_until(lambda n=n: catalog._indexed.queued == n, f"mark {n} to queue")  # type: ignore[misc]
            blocker.execute("COMMIT")
        finally:
            blocker.close()
        callers.join()

        assert callers.errors == {}
        stats = catalog.mark_indexed_stats
        assert (stats.calls, stats.writes, stats.sizes) == (2, 9, {1: 1, 8: 1})
        for n, record in enumerate(records):
            row = catalog.get(record.path)
            assert row is not None and row.state is FileState.INDEXED and row.has_vector
            assert (row.content_hash, row.signature) == (f"hash{n}", "sig-a" if n % 2 else "sig-b")
    finally:
        catalog.close()


def test_a_lone_write_is_made_at_once_and_the_limit_splits_a_long_queue() -> None:
    made: list[list[int]] = []
    gate = threading.Event()

    def write_many(items: object) -> None:
        made.append(list(items))  # type: ignore[call-overload]
        if len(made) == 1:
            gate.wait(30)

    commit: GroupCommit[int] = GroupCommit(write_many, limit=4)
    callers = _Callers()
    _queue_behind_the_first(commit, callers, lambda: len(made) == 1, 6)
    gate.set()
    callers.join()
    assert made == [[0], [1, 2, 3, 4], [5, 6]]


class _Interrupted(BaseException):
    """Not an ``Exception``: what a writing thread may be stopped with."""


def test_a_write_interrupted_in_its_writer_is_made_by_the_next_and_the_writer_raises() -> None:
    made: list[list[int]] = []
    gate = threading.Event()

    def write_many(items: object) -> None:
        batch = list(items)  # type: ignore[call-overload]
        if len(made) == 0:
            made.append(batch)
            gate.wait(30)
            raise _Interrupted
        made.append(batch)

    commit: GroupCommit[int] = GroupCommit(write_many, limit=100)
    callers = _Callers()
    interrupted: list[BaseException] = []

    def first() -> None:
        try:
            commit.write([0])
        except _Interrupted as e:
            interrupted.append(e)

    _queue_behind_the_first(commit, callers, lambda: len(made) == 1, 3, first)
    gate.set()
    callers.join()
    assert callers.errors == {} and len(interrupted) == 1
    assert made == [[0], [1, 2, 3]]
    assert commit.queued == 0


def test_callers_of_a_failed_combined_write_retry_at_the_same_time_not_one_after_another() -> None:
    """A busy or unreachable store fails every call after its timeout: the callers of a combined
    write that failed so each retry at once, in their own threads, so each waits about one more
    timeout, not one per caller before them (the retries meet at a barrier, which one after another
    would never reach)."""
    gate = threading.Event()
    together = threading.Barrier(8)
    calls: list[list[int]] = []

    def write_many(items: object) -> None:
        batch = list(items)  # type: ignore[call-overload]
        calls.append(batch)
        if batch == [0]:
            gate.wait(30)
        elif len(batch) == 1:
            together.wait(timeout=30)  # BrokenBarrierError, not the store's error, if alone
        raise TimeoutError("store busy")

    commit: GroupCommit[int] = GroupCommit(write_many, limit=100)
    callers = _Callers()
    _queue_behind_the_first(commit, callers, lambda: len(calls) == 1, 8)
    gate.set()
    callers.join()
    assert set(callers.errors) == {"first", *(f"c{n}" for n in range(1, 9))}
    assert all(type(e) is TimeoutError for e in callers.errors.values()), callers.errors
    assert calls[:2] == [[0], list(range(1, 9))]
    assert sorted(calls[2:]) == [[n] for n in range(1, 9)]
    # Each caller's error is its own: not raised while handling the combined call's.
    assert all(e.__context__ is None for e in callers.errors.values())
