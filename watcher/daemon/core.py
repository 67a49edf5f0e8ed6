"""``imgwatch watch``: the runtime that keeps the index in step with the roots, in real time.

Threads and what they own:
- watchdog observers (one per root) and the webhook only *produce* events: :class:`Intake` writes
  each to the journal (durable first) and queues it;
- the main thread *dispatches* (:meth:`Daemon._tick`): it routes each event to the
  :class:`Coalescer` (files wait until settled, directories to scan) or to the :class:`OrderedOps`
  (deletes and moves, in order, behind the mass-delete guard), and hands what is due to
  :class:`Workers` (a pool of handler threads whose decoding overlaps the batched model);
- the HTTP surfaces (:mod:`imgwatch.surfaces`) run uvicorn in threads of their own, the jobs run in
  APScheduler's (:class:`Maintenance`), the shadow reindex in its own (:class:`BackgroundReindex`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from imgwatch.context import Context
from imgwatch.daemon.coalesce import SCANS, Coalescer, Due, Pending, backoff
from imgwatch.daemon.commands import RootCommands
from imgwatch.daemon.guard import held_deletions
from imgwatch.daemon.intake import Intake
from imgwatch.daemon.lifecycle import Heartbeat, install_signal_handlers, ready, stopping
from imgwatch.daemon.maintenance import Maintenance
from imgwatch.daemon.migration import LiveMigration, job_runner
from imgwatch.daemon.ordering import DELETIONS, MAX_DELETE_HOLD_S, Op, OrderedOps
from imgwatch.daemon.reports import Reports
from imgwatch.daemon.watches import Watches
from imgwatch.daemon.workers import Finished, Workers
from imgwatch.errors import ImgwatchError, StoreAuthError
from imgwatch.events import (
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageModified,
    ImageMoved,
    Outcome,
    paths_of,
)
from imgwatch.indexer import Plan, plan
from imgwatch.ipc import socket_path
from imgwatch.metrics import DaemonMetrics
from imgwatch.pathlocks import overlap
from imgwatch.reindex import BackgroundReindex, Reindexer
from imgwatch.scan import ScanRules
from imgwatch.services.build import Services
from imgwatch.services.lazy_store import open_now, store_opening
from imgwatch.sources.fs import overflow_rescans
from imgwatch.sources.webhook import allowed_paths
from imgwatch.stats import DaemonStats
from imgwatch.surfaces import DaemonParts, start_control_socket, start_search_page, start_webhook
from imgwatch.web.server import HttpServer, stop_all

log = logging.getLogger(__name__)

ROOT_CHECK_S = 2.0
PULL_FORWARD_S = 10.0


class Daemon:
    def __init__(self, services: Services, roots: list[str], rules: ScanRules) -> None:
        self._settings = settings = services.settings
        self._serving = services.serving
        self._rules = rules
        self._stop = threading.Event()
        self._fatal: ImgwatchError | None = None
        self._stats = DaemonStats()
        self._metrics = DaemonMetrics(self._queue_depths, self._file_counts)
        self._intake = Intake(lambda: self._ctx.catalog, self._received)
        self._watches = Watches(settings, roots, rules, self._intake.submit)
        self._allowed = allowed_paths(roots, settings.s3_mounts)
        self._files = Coalescer(settings.settle_seconds, self._stat)
        self._ops = OrderedOps()
        self._workers = Workers(self._serving, settings.workers, self._metrics.handling_seconds.time)
        self._migration = LiveMigration(services)
        self._reindex = BackgroundReindex(
            Reindexer(services), services, on_fatal=self._fail, paused=self._migration.running
        )
        self._jobs = Maintenance(settings, self._serving, self._reindex, self._rescan_all, self._fail)
        self._heartbeat = Heartbeat()
        self._servers: list[HttpServer] = []
        self._reports = Reports(
            settings, self._serving, self._watches, self._queue_depths, self._stats, self._jobs, self._reindex
        )
        self._reports.migration = self._migration
        self._control: HttpServer | None = None
        self._control_ops = RootCommands(settings, self._serving, rules, self._watches)
        self._last_root_check = 0.0
        self._retrying = False
        self._pulled = 0.0
        self.unfinished_threads = 0
        """Threads still running when :meth:`run` returned (past the shutdown bound): the caller
        must not close the services under them."""

    @property
    def _ctx(self) -> Context:
        """The serving context, for the catalog and files (shared by every context) and brief reads.
        Work that must not straddle a reindex's switch takes ``self._serving.use()`` instead."""
        return self._serving.current

    def _stat(self, path: str) -> tuple[int, int] | None:
        return self._ctx.files.stat(path)  # the context of the moment: a reindex's switch replaces it

    def submit(self, event: ImageEvent) -> None:
        """Record ``event`` durably, then queue it. Safe from any thread."""
        self._intake.submit(event)

    def _received(self, event: ImageEvent) -> None:
        self._stats.received(event.source.value)
        self._metrics.events_received.labels(event.source.value).inc()

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Watch until SIGTERM/SIGINT (or :meth:`stop`); returns the exit code."""
        install_signal_handlers(self.stop, self._stop.is_set)
        roots = self._watches.watched()
        opener = threading.Thread(target=self._open_store, name="imgwatch-store-open", daemon=True)
        opener.start()
        with contextlib.ExitStack() as stack:
            stack.enter_context(overflow_rescans([r.path for r in roots], self._intake.submit))
            stack.callback(self._shut_down)
            # Unfinished events first, so that they keep their place before anything new arrives.
            self._intake.replay()
            self._start_surfaces()
            for root in roots:
                if self._watches.start(root):
                    self._intake.rescan(root.path)
            self._control = start_control_socket(self._parts())
            self._jobs.start()
            self._reindex.start()
            ready(len(roots))
            log.info("watching %s", ", ".join(repr(r.path) for r in roots))
            while not self._stop.is_set():
                try:
                    self._tick()
                except StoreAuthError as e:
                    self._fail(e)
                except Exception:
                    log.exception("daemon loop error; carrying on")
                    time.sleep(1)
        if self._fatal is not None:
            raise self._fatal
        return 0

    def _start_surfaces(self) -> None:
        """The webhook and page bind first: a port in use or a refused address fails before anything
        runs."""
        parts = self._parts()
        if self._settings.webhook:
            self._reports.webhook_url = f"http://{self._settings.webhook}/events"
            self._servers.append(start_webhook(parts))
        if self._settings.search_page:
            server, self._reports.search_page_url = start_search_page(parts)
            self._servers.append(server)

    def stop(self) -> None:
        self._stop.set()
        self._intake.wake()

    def _open_store(self) -> None:
        """Open the serving store while the daemon starts up. Milvus Lite loads every vector into
        memory (measured 31 s at 100,000 x 4096-d), and an unchanged tree's catch-up, moves and
        status need none of it: they go on meanwhile, while a search or a write waits for the open.
        A store that cannot be opened stops the daemon as it did when it was opened first."""
        vectors = self._serving.current.vectors
        if not store_opening(vectors):
            return
        started = time.monotonic()
        try:
            open_now(vectors)
        except ImgwatchError as e:
            self._fail(e)
            return
        except Exception as e:  # noqa: BLE001 - whatever Milvus raises, the daemon cannot serve without it
            self._fail(ImgwatchError(f"cannot open the vector store: {type(e).__name__}: {e}"))
            return
        log.info(
            "vector store open (collection %r) in %.1f s", vectors.collection, time.monotonic() - started
        )

    def _fail(self, error: ImgwatchError) -> None:
        """Stop, and make :meth:`run` raise ``error``: retrying cannot cure it. Safe from any thread;
        the work it interrupted stays in the journal for the next start."""
        if self._fatal is None:
            self._fatal = error
            log.error("%s; stopping: retrying cannot help", error)
        self.stop()

    def _tick(self) -> None:
        for event, ids in self._intake.take(timeout=self._wait_time()):
            self._accept(event, ids)
        if self._stop.is_set():
            return
        now = time.monotonic()
        for finished in self._workers.finished():
            self._reap(finished, now)
        self._start_due(now)
        self._run_ops(now)
        if now - self._last_root_check > ROOT_CHECK_S:
            self._last_root_check = now
            for root in self._watches.check():
                self._intake.rescan(root)
        self._heartbeat.beat(now)

    def _wait_time(self) -> float:
        if self._workers.busy():
            return 0.01
        now = time.monotonic()
        # Only future moments: work that is due but waits (behind an op in backoff, say) wakes the
        # loop through what it waits for, and must not make it spin.
        dues = [d for d in (self._files.next_due(after=now), self._ops.next_due(after=now)) if d is not None]
        ping = self._heartbeat.wait_limit(now)
        wait = min([*dues, now + 0.5, *([now + ping] if ping is not None else [])]) - now
        return min(max(wait, 0.0), 0.5)

    def _shut_down(self) -> None:
        """Stop taking work, let what has begun end (within the bound), then return: only then may
        the caller close the stores. Unfinished work stays in the journal for the next start. Each
        step runs even if an earlier one failed (a start that failed half-way stops here too)."""
        deadline = stopping()
        left = max(0.0, min(5.0, deadline - time.monotonic()))
        steps: list[tuple[str, Callable[[], object]]] = [
            ("the queued work", self._put_back_queued),
            ("the jobs", lambda: self._jobs.stop(deadline)),
            # An unfinished reindex resumes from its ledger on the next start: waiting costs time only.
            ("the reindex", lambda: self._reindex.stop(timeout=left)),
            # As the reindex: a copy cut short resumes from its record when migrate is given again.
            ("the migration", lambda: self._migration.stop(timeout=left)),
            ("the servers", lambda: stop_all([*self._servers, self._control])),
            ("the socket", self._remove_socket),
            ("the watches", lambda: self._watches.stop(deadline)),
        ]
        results: dict[str, object] = {}
        for name, step in steps:
            try:
                results[name] = step()
            except Exception:
                log.exception("stopping %s failed; going on with the shutdown", name)
        running = self._workers.wait(deadline)
        for finished in self._workers.finished():
            self._reap(finished, time.monotonic())
        self.unfinished_threads = running + (results.get("the jobs") is not True)
        if self.unfinished_threads:
            log.warning(
                "%d handler(s) or job(s) still running at the shutdown bound", self.unfinished_threads
            )
        try:
            pending = self._ctx.catalog.journal_counts()["pending"]
        except Exception:  # noqa: BLE001 - a full or locked catalog: count what is in memory
            pending = len(self._files) + len(self._ops) + running
        log.info("stopped; %d unfinished event(s) stay in the journal for the next start", pending)

    def _remove_socket(self) -> None:
        if self._control is not None:
            socket_path(self._settings.data_dir).unlink(missing_ok=True)

    def _put_back_queued(self) -> None:
        for key, work in self._workers.cancel_queued():
            if isinstance(work, Op):
                self._ops.retry_first(work)
            else:
                self._files.put_back(key, work)

    # ---- dispatching -------------------------------------------------------------------------

    def _accept(self, event: ImageEvent, ids: list[int]) -> None:
        now = time.monotonic()
        if isinstance(event, ImageCreated | ImageModified):
            self._files.file_changed(event, ids + self._ops.cancel_deletion(event.path), now)
        elif isinstance(event, SCANS):
            self._files.scan_requested(event, ids, now)
        elif isinstance(event, ImageDeleted | DirectoryDeleted):
            ids = ids + self._files.cancel(event.path, under=isinstance(event, DirectoryDeleted))
            self._ops.add(event, ids, now)
        elif isinstance(event, ImageMoved | DirectoryMoved):
            self._ops.add(event, ids, now)
            self._files.follow(event.src_path, event.dest_path, now)
        else:  # pragma: no cover - every event type is listed above
            raise TypeError(f"no dispatch rule for {event!r}")

    def _start_due(self, now: float) -> None:
        queued = [*self._ops.paths(), *self._workers.op_paths()]

        def waits(key: str, waiting: Pending) -> bool:
            # A queued move or delete changes what this would see: after it.
            return self._workers.reading(key) or overlap(paths_of(waiting.event), queued)

        for due, key, waiting in self._files.take_due(now, waits):
            if due is Due.SCAN:
                self._start_scan(key, waiting)
            elif due is Due.GONE:
                # Gone already; the delete event that follows (if it was ever indexed) does the rest.
                self._journal_done(waiting.journal_ids)
            else:
                self._workers.read(key, waiting)

    def _run_ops(self, now: float) -> None:
        for op in held_deletions(self._ops.deletions(), self._watches, self._ctx.catalog, self._settings):
            self._ops.remove(op)
            self._journal_done(op.journal_ids, error="held by the mass-delete guard")
        for op in self._ops.take_due(
            now, self._workers.blocked_paths(), lambda op: self._deletion_waits(op, now)
        ):
            self._workers.apply(op)

    def _deletion_waits(self, op: Op, now: float) -> bool:
        """A deletion waits while new files are being read: one of them may be this file, moved to
        another root, and can then take its vector along instead of running the model."""
        if not isinstance(op.event, DELETIONS) or now - op.received >= MAX_DELETE_HOLD_S:
            return False
        return self._workers.reading_files() or self._files.reading_soon(now + 0.5)

    def _start_scan(self, key: str, waiting: Pending) -> None:
        path = paths_of(waiting.event)[0]
        root = self._watches.of(path)
        if root is None or not os.path.isdir(path) or not self._watches.present(root):
            self._journal_done(waiting.journal_ids)
            return
        self._workers.scan(key, waiting, lambda where, ctx: plan([where], self._rules, ctx))

    def _reap(self, finished: Finished, now: float) -> None:
        work = finished.work
        if finished.error is not None:
            self._failed(finished, now)
        elif isinstance(finished.result, Plan):
            self._planned(finished.result, work, now)
        else:
            assert finished.result is not None
            if self._retrying and now - self._pulled > PULL_FORWARD_S:
                # Something works again: what waits for a retry (the same store) may work too. At
                # most once per PULL_FORWARD_S, so a file that fails for its own reason is not
                # retried after every success.
                self._retrying, self._pulled = False, now
                self._files.pull_forward(now)
                self._ops.pull_forward(now)
            self._stats.outcome(finished.result.value)
            self._metrics.outcomes.labels(finished.result.value).inc()
            self._journal_done(work.journal_ids)
            if finished.result is not Outcome.UNCHANGED:
                log.info("%s %s", finished.result.value, " -> ".join(map(repr, paths_of(work.event))))

    def _failed(self, finished: Finished, now: float) -> None:
        work, error = finished.work, finished.error
        assert error is not None
        if isinstance(work, Pending) and isinstance(work.event, SCANS):
            log.warning("cannot scan %r: %s", paths_of(work.event)[0], error)  # vanished, unreadable
            self._journal_done(work.journal_ids, error=str(error))
            return
        reason = f"{type(error).__name__}: {error}"
        if isinstance(error, StoreAuthError):
            self._fail(error)  # not retried; it stays pending, in the journal too
        else:
            # Rescheduled before anything that touches the disk: on a full disk the journal write
            # below fails too, and the work must still come back.
            work.attempts += 1
            work.due = now + backoff(work.attempts)
            self._retrying = True
            self._stats.retried(reason)
            self._metrics.errors.inc()
            log.warning(
                "%s failed (%s); retrying in %.0f s",
                " -> ".join(map(repr, paths_of(work.event))),
                reason,
                work.due - now,
            )
        if isinstance(work, Op):
            self._ops.retry_first(work)  # later ops on these paths wait for it
        else:
            self._files.put_back(finished.key, work)
        if not isinstance(error, StoreAuthError):
            self._journal(lambda: self._ctx.catalog.journal_retry(work.journal_ids, reason))

    def _journal_done(self, ids: list[int], error: str | None = None) -> None:
        self._journal(lambda: self._ctx.catalog.journal_done(ids, error=error))

    def _journal(self, write: Callable[[], None]) -> None:
        """Journal bookkeeping is best-effort: a row left pending is replayed (idempotently) at the
        next start, while an exception here would drop the work it describes from the loop."""
        try:
            write()
        except Exception as e:  # noqa: BLE001 - the catalog's disk is full or locked: logged, not fatal
            log.warning(
                "cannot update the journal (%s: %s); it is replayed at the next start", type(e).__name__, e
            )

    def _planned(self, work: Plan, scan: Pending | Op, now: float) -> None:
        for event in [*work.moves, *work.deletions]:
            self._accept(event, [])
        for event in work.changes:
            assert isinstance(event, ImageCreated | ImageModified)
            self._accept(replace(event, write_closed=True), [])
        self._journal_done(scan.journal_ids)
        if work.total - work.unchanged:
            where = paths_of(scan.event)[0]
            log.info("scan of %r: %d to do, %d unchanged", where, work.total - work.unchanged, work.unchanged)

    def _rescan_all(self) -> int:
        watched = self._watches.active()
        for root in watched:
            self._intake.rescan(root)
        return len(watched)

    # ---- what the surfaces reach -------------------------------------------------------------

    def _parts(self) -> DaemonParts:
        return DaemonParts(
            settings=self._settings,
            serving=self._serving,
            allowed=self._allowed,
            roots=list(self._watches.roots),
            submit=self.submit,
            health=self._reports.health,
            metrics=self._metrics.render,
            count_webhook_request=lambda method, status: self._metrics.webhook_requests.labels(
                method, str(status)
            ).inc(),
            status=self._reports.status,
            index=self._control_ops.index,
            run_job=job_runner(
                lambda name: (
                    self._jobs.run(name)
                    | ({"reindex": self._reindex.status()} if name == "reconcile" else {})
                ),
                self._migration,
            ),
            forget_root=self._control_ops.forget,
        )

    def _queue_depths(self) -> dict[str, int]:
        depths = self._workers.depths()
        return {
            "waiting": len(self._files),
            "in_flight": depths["in_flight"],
            "ordered": len(self._ops) + depths["ordered"],
            "scanning": depths["scanning"],
        }

    def _file_counts(self) -> dict[str, int]:
        return {state.value: n for state, n in self._ctx.catalog.counts().items()}
