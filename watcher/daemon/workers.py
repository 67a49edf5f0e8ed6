"""Work in flight: settled files and ordered ops in a pool of handler threads, scans in threads of
their own. Each piece of work is handled by one thread at a time and reported back once, to the
main loop, which alone decides what happens next (done, retried, rescanned).

Copies, moves and deletions that become due together are applied together (:mod:`imgwatch.batches`):
they join an open batch, which one of two lanes (pool threads that apply batches one after another)
takes a few milliseconds later, or once the batch before it is written: batches grow with the load.
Each piece of work keeps its own future, so the main loop sees them one by one as before; what a
batch cannot take (new content for the model, a move from an unknown path) goes back to the pool,
one event per thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from imgwatch import batches
from imgwatch.context import Context
from imgwatch.daemon.coalesce import Pending
from imgwatch.daemon.ordering import Op
from imgwatch.events import ImageCreated, ImageEvent, ImageModified, Outcome, paths_of
from imgwatch.indexer import Plan
from imgwatch.runtime import handle
from imgwatch.serving import Serving

Scan = Callable[[str, Context], Plan]

#: Threads that apply batches (Milvus writes go one at a time: while one lane writes, the other
#: reads and hashes its files) and how long a lane waits for a tick's work before taking a batch.
BATCH_LANES = 2
BATCH_LOOK_S = 0.005


class _Batch:
    """Events that one pool thread applies together, each with the future its submitter holds."""

    def __init__(self) -> None:
        self.items: list[tuple[ImageEvent, Future[Outcome]]] = []
        self.paths: set[str] = set()


@dataclass
class Finished:
    """A piece of work that ended: ``result`` (an Outcome, or a Plan for a scan) or ``error``."""

    key: str
    work: Pending | Op
    result: Outcome | Plan | None = None
    error: Exception | None = None


class Workers:
    def __init__(
        self, serving: Serving, threads: int, timed: Callable[[], AbstractContextManager[object]]
    ) -> None:
        self._serving = serving
        self._timed = timed
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imgwatch-handler")
        self._files: dict[str, tuple[Future[Outcome], Pending]] = {}
        self._ops: dict[Op, Future[Outcome]] = {}
        self._scans: dict[str, tuple[Future[Plan], Pending]] = {}
        self._batch_lock = threading.Lock()
        self._open: _Batch | None = None
        """The batch that work joins, until a lane takes it."""
        self._full: deque[_Batch] = deque()
        """Batches closed because full (or holding a path again), waiting for a lane."""
        self._lanes = 0

    # ---- starting work -----------------------------------------------------------------------

    def read(self, key: str, waiting: Pending) -> None:
        self._files[key] = (self._submit(waiting.event), waiting)

    def apply(self, op: Op) -> None:
        self._ops[op] = self._submit(op.event)

    def _submit(self, event: ImageEvent) -> Future[Outcome]:
        if not isinstance(event, batches.BATCHED):
            return self._pool.submit(self._handle, event)
        future: Future[Outcome] = Future()
        paths = paths_of(event)
        with self._batch_lock:
            batch = self._open
            if batch is None or len(batch.items) >= batches.BATCH or batch.paths.intersection(paths):
                if batch is not None:
                    self._full.append(batch)
                batch = self._open = _Batch()
            batch.items.append((event, future))
            batch.paths.update(paths)
            if self._lanes < BATCH_LANES:
                self._lanes += 1
                self._pool.submit(self._lane)
        return future

    def _lane(self) -> None:
        """Apply batches one after another while there are any. The Milvus writes of a batch take a
        while: what becomes due meanwhile joins the next batch, so batches grow with the load."""
        while True:
            time.sleep(BATCH_LOOK_S)  # the main loop hands over a tick's due work one piece at a time
            with self._batch_lock:
                if self._full:
                    batch = self._full.popleft()
                elif self._open is not None:
                    batch, self._open = self._open, None
                else:
                    self._lanes -= 1
                    return
            try:
                self._apply_batch(batch)
            except BaseException as e:
                # Never expected (apply_batch settles every future), but a lane that died uncounted
                # would leave every later batch waiting for it, and an unsettled future its work.
                for _, future in batch.items:
                    if not future.done():
                        future.set_exception(e)
                with self._batch_lock:
                    self._lanes -= 1
                raise

    def _apply_batch(self, batch: _Batch) -> None:
        """Apply ``batch``, settle each future (or hand its event to the pool when the batch left it)."""
        # Work cancelled at shutdown before this thread took it is not applied: it stays journalled.
        items = [(event, future) for event, future in batch.items if future.set_running_or_notify_cancel()]
        futures = {id(event): future for event, future in items}
        try:
            with self._serving.use() as ctx:
                applied = batches.apply([event for event, _ in items], ctx)
        except Exception:  # noqa: BLE001 - a bug or a switch that failed: the handlers, one by one
            applied = batches.Applied(left=[event for event, _ in items])
        for event, outcome in applied.done:
            futures[id(event)].set_result(outcome)
        for event in applied.left:
            self._handle_later(event, futures[id(event)])

    def _handle_later(self, event: ImageEvent, future: Future[Outcome]) -> None:
        def run() -> None:
            try:
                future.set_result(self._handle(event))
            except BaseException as e:  # noqa: BLE001 - handed to the main loop
                future.set_exception(e)

        try:
            self._pool.submit(run)
        except RuntimeError:  # the pool is shutting down: this thread, which still runs, does it
            run()

    def scan(self, key: str, waiting: Pending, scan: Scan) -> None:
        """Compare a directory with the catalog in a thread of its own: a big root takes a while, and
        the main loop must keep dispatching, answering signals and pinging systemd's watchdog."""
        path = paths_of(waiting.event)[0]
        future: Future[Plan] = Future()
        future.set_running_or_notify_cancel()  # running from now on: only its thread ends it

        def run() -> None:
            try:
                with self._serving.use() as ctx:
                    future.set_result(scan(path, ctx))
            except BaseException as e:  # noqa: BLE001 - handed to the main loop
                future.set_exception(e)

        threading.Thread(target=run, name="imgwatch-scan", daemon=True).start()
        self._scans[key] = (future, waiting)

    def _handle(self, event: ImageEvent) -> Outcome:
        with self._serving.use() as ctx:
            if not isinstance(event, ImageCreated | ImageModified):
                return handle(event, ctx)
            with self._timed():  # the extraction histogram: file reads only
                return handle(event, ctx)

    # ---- what is running ---------------------------------------------------------------------

    def reading(self, key: str) -> bool:
        return key in self._files or key in self._scans

    def busy(self) -> bool:
        return bool(self._files or self._scans or self._ops)

    def reading_files(self) -> bool:
        return bool(self._files or self._scans)

    def blocked_paths(self) -> list[str]:
        """Paths with work in flight: ordered ops on them wait."""
        return [*self._files, *(path for op in self._ops for path in op.paths)]

    def op_paths(self) -> list[str]:
        return [path for op in self._ops for path in op.paths]

    def depths(self) -> dict[str, int]:
        return {"in_flight": len(self._files), "ordered": len(self._ops), "scanning": len(self._scans)}

    def journal_ids(self) -> list[int]:
        return [
            *(i for _, waiting in self._files.values() for i in waiting.journal_ids),
            *(i for op in self._ops for i in op.journal_ids),
        ]

    # ---- collecting --------------------------------------------------------------------------

    def finished(self) -> Iterator[Finished]:
        """The work that ended, each taken off the books only as it is handed over: if the caller
        fails on one, the rest stay in flight for the next call."""
        for op, future in list(self._ops.items()):
            if future.done():
                del self._ops[op]
                yield _collect(op.paths[0], op, future)
        for key, (file_future, waiting) in list(self._files.items()):
            if file_future.done():
                del self._files[key]
                yield _collect(key, waiting, file_future)
        for key, (scan_future, waiting) in list(self._scans.items()):
            if scan_future.done():
                del self._scans[key]
                yield _collect(key, waiting, scan_future)

    def cancel_queued(self) -> list[tuple[str, Pending | Op]]:
        """Cancel the pool's work that has not started (at shutdown; its events stay in the
        journal) and return it: it is neither done nor failed."""
        cancelled: list[tuple[str, Pending | Op]] = []
        for op, future in list(self._ops.items()):
            if future.cancel():
                del self._ops[op]
                cancelled.append((op.paths[0], op))
        for key, (file_future, waiting) in list(self._files.items()):
            if file_future.cancel():
                del self._files[key]
                cancelled.append((key, waiting))
        return cancelled

    def wait(self, deadline: float) -> int:
        """Let the handlers that have begun end, until ``deadline`` (monotonic); returns how many
        still run then. Scans are not waited for: they only read, and are redone at the next start."""
        futures: list[Future[Any]] = [*(f for f, _ in self._files.values()), *self._ops.values()]
        _, running = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=not running, cancel_futures=True)
        return len(running)


def _collect(key: str, work: Pending | Op, future: Future[Outcome] | Future[Plan]) -> Finished:
    try:
        return Finished(key, work, result=future.result())
    except Exception as e:  # noqa: BLE001 - the main loop decides: retry, fail, give up
        return Finished(key, work, error=e)
