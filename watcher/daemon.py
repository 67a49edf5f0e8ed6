"""``imgwatch watch``: the runtime that keeps the index in step with the roots, in real time.

Threads and what they own:
- watchdog observers (one per root) and the webhook only *produce* events: :meth:`Daemon.submit`
  writes each to the journal (durable first) and puts it on the inbox;
- the main thread *dispatches*: it coalesces file events until the file has settled, keeps deletes
  and moves in order, applies the mass-delete guard, and hands settled files to a pool of handler
  threads (whose decoding overlaps the batched model);
- the HTTP surfaces (:mod:`imgwatch.surfaces`: webhook, search page, control socket) run uvicorn
  in threads of their own; the control socket answers ``search``/``status``/``index`` from the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from imgwatch.context import Context
from imgwatch.errors import ConfigError, RootInUseError, StoreAuthError
from imgwatch.events import (
    DirectoryCreated,
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageModified,
    ImageMoved,
    Outcome,
    RescanRequested,
    Source,
    paths_of,
)
from imgwatch.handlers import HANDLERS
from imgwatch.indexer import Plan, plan, run_plan
from imgwatch.ipc import socket_path
from imgwatch.jobs import compact, repair_vectors, run_recorded
from imgwatch.metrics import DaemonMetrics
from imgwatch.notify import sd_notify, watchdog_interval
from imgwatch.reindex import BackgroundReindex, Reindexer
from imgwatch.scan import ScanRules
from imgwatch.services.build import Services
from imgwatch.sources.fs import RootWatch, overflow_rescans, watch_root
from imgwatch.sources.webhook import allowed_paths
from imgwatch.stats import DaemonStats
from imgwatch.surfaces import DaemonParts, start_control_socket, start_search_page, start_webhook
from imgwatch.web.server import HttpServer, stop_all

log = logging.getLogger(__name__)

#: A SIGTERM is answered with exit 0 within this bound (the systemd units allow a little more).
SHUTDOWN_TIMEOUT_S = 30.0
#: After close-after-write, wait this long for another write before reading: a burst of saves
#: (an editor, a sync tool) is read once, with its final content.
CLOSED_SETTLE_S = 0.15
#: A file changed again this soon after it was read is "hot": wait for it to settle instead.
HOT_S = 1.0
#: Deletions wait this long, so that a file moved to another root can take its vector along.
DELETE_HOLD_S = 0.5
MAX_DELETE_HOLD_S = 10.0
ROOT_CHECK_S = 2.0
MAX_RETRY_DELAY_S = 300.0
SCAN_DELAY_S = 0.2

_DELETIONS = (ImageDeleted, DirectoryDeleted)
_SCANS = (DirectoryCreated, RescanRequested)


@dataclass
class _Pending:
    """Work waiting for its moment: a file to settle, or a directory to scan."""

    event: ImageEvent
    journal_ids: list[int]
    due: float
    stat: tuple[int, int] | None = None
    attempts: int = 0


@dataclass(eq=False)
class _Op:
    """A delete or move, applied in arrival order."""

    event: ImageEvent
    journal_ids: list[int]
    due: float
    received: float
    attempts: int = 0


@dataclass
class _Root:
    path: str
    watch: RootWatch | None = None
    guard: str | None = None
    """Why deletions under this root are held back (missing root, mass deletion), or None."""
    watched: bool = True
    """False for S3 mount directories: only the webhook reports their changes."""
    mount_point: bool = False
    """The root was a mount point at start: while it is not one, its filesystem is unmounted."""


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _overlaps(paths: tuple[str, ...] | list[str], others: list[str]) -> bool:
    return any(_under(a, b) or _under(b, a) for a in paths for b in others)


def _backoff(attempts: int) -> float:
    return float(min(MAX_RETRY_DELAY_S, 2 ** min(attempts, 16)))


class Daemon:
    def __init__(self, services: Services, roots: list[str], rules: ScanRules) -> None:
        settings = services.settings
        self._settings = settings
        self._services = services
        self._serving = services.serving
        self._reindex = BackgroundReindex(Reindexer(services), services, on_fatal=self._fail)
        self._rules = rules
        self._roots = {root: _Root(root, mount_point=os.path.ismount(root)) for root in roots}
        for mount in settings.s3_mounts.values():
            self._roots.setdefault(mount, _Root(mount, watched=False))
        self._allowed = allowed_paths(roots, settings.s3_mounts)
        self._metrics = DaemonMetrics(self._queue_depths, self._file_counts)
        self._webhook: HttpServer | None = None
        self._search_page: HttpServer | None = None
        self._search_page_url: str | None = None
        self._scheduler: BackgroundScheduler | None = None
        # SimpleQueue: its put() is reentrant, so the signal handler may call it at any moment.
        self._inbox: queue.SimpleQueue[tuple[ImageEvent, list[int]]] = queue.SimpleQueue()
        self._pending: dict[str, _Pending] = {}
        self._ops: deque[_Op] = deque()
        self._in_flight: dict[str, tuple[Future[Outcome], _Pending]] = {}
        self._scans: dict[str, tuple[Future[Plan], _Pending]] = {}
        #: Directory moves/deletes being applied in the pool: they can take minutes for big folders,
        #: and the main loop must keep pinging systemd's watchdog and answering signals meanwhile.
        self._ops_in_flight: dict[_Op, Future[Outcome]] = {}
        self._last_read: dict[str, float] = {}
        workers = settings.batch_size + 4
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgwatch-handler")
        self._stop = threading.Event()
        self._fatal: StoreAuthError | None = None
        self._stats = DaemonStats()
        self._started = time.time()
        self._last_root_check = 0.0
        self._last_ping = 0.0
        self._ping_every = watchdog_interval()
        self._endpoint: HttpServer | None = None

    @property
    def _ctx(self) -> Context:
        """The serving context, for the catalog and files (shared by every context) and brief reads.
        Work that must not straddle a reindex's switch takes ``self._serving.use()`` instead."""
        return self._serving.current

    # ---- producing ---------------------------------------------------------------------------

    def submit(self, event: ImageEvent) -> None:
        """Record ``event`` durably, then queue it. Safe from any thread."""
        journal_id = self._ctx.catalog.journal_append(event)
        self._stats.received(event.source.value)
        self._metrics.events_received.labels(event.source.value).inc()
        self._inbox.put((event, [journal_id]))

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Watch until SIGTERM/SIGINT (or :meth:`stop`); returns the exit code."""
        self._install_signal_handlers()
        roots = [r for r in self._roots.values() if r.watched]
        with contextlib.ExitStack() as stack:
            stack.enter_context(overflow_rescans([r.path for r in roots], self.submit))
            stack.callback(self._shut_down)
            # Unfinished events first, so that they keep their place before anything new arrives.
            for journal_id, event in self._ctx.catalog.journal_pending():
                self._inbox.put((event, [journal_id]))
            # The webhook binds next: a port in use or a refused address must fail before anything runs.
            parts = self._parts()
            if self._settings.webhook:
                self._webhook = start_webhook(parts)
            if self._settings.search_page:
                self._search_page, self._search_page_url = start_search_page(parts)
            for root in roots:
                self._start_watch(root)
            for root in roots:
                if root.watch is not None:
                    self._inbox.put((RescanRequested(root.path, source=Source.SCAN), []))
            self._endpoint = start_control_socket(parts)
            self._scheduler = self._start_scheduler()
            self._reindex.start()
            sd_notify("READY=1", f"STATUS=watching {len(roots)} root(s)")
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

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put((RescanRequested("", source=Source.SCAN), []))  # wake the loop

    def _fail(self, error: StoreAuthError) -> None:
        """Stop, and make :meth:`run` raise ``error``: retrying cannot cure it. Safe from any thread;
        the work it interrupted stays in the journal for the next start."""
        if self._fatal is None:
            self._fatal = error
            log.error("%s; stopping: retrying cannot help", error)
        self.stop()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self._stop.is_set():
                # Second signal: leave now. Unfinished work is in the journal and the catalog.
                log.warning("second %s: exiting at once", signal.Signals(signum).name)
                os._exit(1)
            log.info("%s: finishing current work, then stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _tick(self) -> None:
        try:
            event, ids = self._inbox.get(timeout=self._wait_time())
            self._accept(event, ids)
            while not self._inbox.empty():
                event, ids = self._inbox.get_nowait()
                self._accept(event, ids)
        except queue.Empty:
            pass
        if self._stop.is_set():
            return
        now = time.monotonic()
        self._reap(now)
        self._reap_scans(now)
        self._start_due(now)
        self._run_ops(now)
        if now - self._last_root_check > ROOT_CHECK_S:
            self._last_root_check = now
            self._check_roots()
        if self._ping_every and now - self._last_ping > self._ping_every:
            self._last_ping = now
            sd_notify("WATCHDOG=1")

    def _wait_time(self) -> float:
        if self._in_flight or self._scans or self._ops_in_flight:
            return 0.01
        dues = [p.due for p in self._pending.values()] + [op.due for op in self._ops]
        wait = min(dues, default=time.monotonic() + 0.5) - time.monotonic()
        return min(max(wait, 0.0), 0.5)

    def _shut_down(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S - 5
        sd_notify("STOPPING=1")
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        # An unfinished reindex resumes from its ledger on the next start; waiting costs only time.
        self._reindex.stop(timeout=5.0)
        stop_all([self._webhook, self._search_page, self._endpoint])
        for root in self._roots.values():
            if root.watch is not None:
                root.watch.stop()
        if self._endpoint is not None:
            socket_path(self._settings.data_dir).unlink(missing_ok=True)
        for future in [f for f, _ in self._in_flight.values()] + list(self._ops_in_flight.values()):
            # Unfinished or failed work stays pending in the journal for the next start.
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, deadline - time.monotonic()))
        self._reap(time.monotonic())
        self._pool.shutdown(wait=False, cancel_futures=True)
        left = len(self._pending) + len(self._ops) + len(self._in_flight) + len(self._ops_in_flight)
        log.info("stopped; %d unfinished event(s) stay in the journal for the next start", left)

    # ---- coalescing and ordering -------------------------------------------------------------

    def _accept(self, event: ImageEvent, ids: list[int]) -> None:
        now = time.monotonic()
        stat = self._ctx.files.stat
        if isinstance(event, ImageCreated | ImageModified):
            for op in [
                o for o in self._ops if isinstance(o.event, ImageDeleted) and o.event.path == event.path
            ]:
                # Deleted, then written again (an editor's "rename to backup, write anew"): the file is here.
                self._ops.remove(op)
                ids = ids + op.journal_ids
            # Hot: read (or changed while hot) less than HOT_S ago. A burst keeps a file hot, so its
            # saves are read once more, after the burst, rather than once per save.
            hot = now - self._last_read.get(event.path, -HOT_S) < HOT_S
            if hot:
                self._last_read[event.path] = now
            settle = CLOSED_SETTLE_S if event.write_closed and not hot else self._settings.settle_seconds
            waiting = self._pending.get(event.path)
            if waiting is None:
                self._pending[event.path] = _Pending(event, ids, now + settle, stat(event.path))
            else:
                waiting.journal_ids += ids
                waiting.due = now + settle
                waiting.stat = stat(event.path)
        elif isinstance(event, _SCANS):
            if not event.path:
                return  # the wake-up call from stop()
            key = "scan:" + event.path
            waiting = self._pending.get(key)
            if waiting is None:
                self._pending[key] = _Pending(event, ids, now + SCAN_DELAY_S)
            else:
                waiting.journal_ids += ids
        elif isinstance(event, ImageDeleted | DirectoryDeleted):
            ids = ids + self._cancel_pending_under(event.path, exact=isinstance(event, ImageDeleted))
            self._ops.append(_Op(event, ids, now + DELETE_HOLD_S, now))
        elif isinstance(event, ImageMoved):
            moved = self._pending.pop(event.src_path, None)
            self._ops.append(_Op(event, ids, now, now))
            if moved is not None:
                self._rekey(event.dest_path, moved, now)
        elif isinstance(event, DirectoryMoved):
            for key in [k for k in self._pending if _under(k, event.src_path) and not k.startswith("scan:")]:
                waiting = self._pending.pop(key)
                self._rekey(event.dest_path + key[len(event.src_path) :], waiting, now)
            self._ops.append(_Op(event, ids, now, now))
        else:  # pragma: no cover - every event type is listed above
            raise TypeError(f"no dispatch rule for {event!r}")

    def _rekey(self, new_path: str, waiting: _Pending, now: float) -> None:
        """Pending work follows its file to ``new_path`` (merging with work already waiting there)."""
        existing = self._pending.get(new_path)
        ids = waiting.journal_ids + (existing.journal_ids if existing else [])
        event = ImageModified(new_path, write_closed=True, source=waiting.event.source)
        self._pending[new_path] = _Pending(event, ids, now + CLOSED_SETTLE_S, self._ctx.files.stat(new_path))

    def _cancel_pending_under(self, path: str, *, exact: bool) -> list[int]:
        keys = [k for k in self._pending if (k == path if exact else _under(k, path))]
        return [journal_id for key in keys for journal_id in self._pending.pop(key).journal_ids]

    def _start_due(self, now: float) -> None:
        queued = [p for op in [*self._ops, *self._ops_in_flight] for p in paths_of(op.event)]
        for key, waiting in list(self._pending.items()):
            if waiting.due > now or key in self._in_flight or key in self._scans:
                continue
            if _overlaps(paths_of(waiting.event), queued):
                continue  # a queued move or delete changes what this would see: after it
            if isinstance(waiting.event, _SCANS):
                del self._pending[key]
                self._start_scan(key, waiting)
                continue
            current = self._ctx.files.stat(key)
            if current is None and waiting.event.source is Source.WEBHOOK and waiting.attempts < 5:
                # Announced by a webhook but not visible yet (a slow network mount): look again later.
                waiting.attempts += 1
                waiting.due = now + _backoff(waiting.attempts)
                continue
            if current is None:
                # Gone already; the delete event that follows (if it was ever indexed) does the rest.
                del self._pending[key]
                self._ctx.catalog.journal_done(waiting.journal_ids)
                continue
            if current != waiting.stat:
                waiting.stat, waiting.due = current, now + self._settings.settle_seconds
                continue
            del self._pending[key]
            self._in_flight[key] = (self._pool.submit(self._handle, waiting.event), waiting)
            self._last_read[key] = now
        if len(self._last_read) > 10_000:
            self._last_read = {k: t for k, t in self._last_read.items() if now - t < HOT_S}

    def _handle(self, event: ImageEvent) -> Outcome:
        with self._serving.use() as ctx:
            if not isinstance(event, ImageCreated | ImageModified):
                return HANDLERS[type(event)](event, ctx)
            with self._metrics.handling_seconds.time():
                return HANDLERS[type(event)](event, ctx)

    def _reap(self, now: float) -> None:
        for op, op_future in list(self._ops_in_flight.items()):
            if not op_future.done():
                continue
            del self._ops_in_flight[op]
            try:
                outcome = op_future.result()
            except StoreAuthError as e:
                self._fail(e)
                self._ops.appendleft(op)
                continue
            except Exception as e:  # noqa: BLE001 - retried later; later ops on these paths wait
                self._retry(op, e, now)
                self._ops.appendleft(op)
                continue
            self._count(outcome)
            self._ctx.catalog.journal_done(op.journal_ids)
            if outcome is not Outcome.UNCHANGED:
                log.info("%s %s", outcome.value, _describe(op.event))
        for key, (future, waiting) in list(self._in_flight.items()):
            if not future.done():
                continue
            del self._in_flight[key]
            try:
                outcome = future.result()
            except Exception as e:  # noqa: BLE001 - a store that went away, a bug: retry later
                if isinstance(e, StoreAuthError):
                    self._fail(e)  # not retried; it stays pending, in the journal too
                else:
                    self._retry(waiting, e, now)
                if key not in self._pending:
                    self._pending[key] = waiting
                else:
                    self._pending[key].journal_ids += waiting.journal_ids
                continue
            self._count(outcome)
            self._ctx.catalog.journal_done(waiting.journal_ids)
            if outcome is not Outcome.UNCHANGED:
                log.info("%s %s", outcome.value, _describe(waiting.event))

    def _count(self, outcome: Outcome) -> None:
        self._stats.outcome(outcome.value)
        self._metrics.outcomes.labels(outcome.value).inc()

    def _retry(self, work: _Pending | _Op, error: Exception, now: float) -> None:
        work.attempts += 1
        work.due = now + _backoff(work.attempts)
        self._stats.retried()
        self._metrics.errors.inc()
        self._ctx.catalog.journal_retry(work.journal_ids, f"{type(error).__name__}: {error}")
        log.warning(
            "%s failed (%s: %s); retrying in %.0f s",
            _describe(work.event),
            type(error).__name__,
            error,
            work.due - now,
        )

    def _run_ops(self, now: float) -> None:
        """Apply due deletes and moves. Order is kept only where it matters: an op waits for earlier
        ops and for in-flight work on overlapping paths, and runs past unrelated ones."""
        blocked: list[str] = list(self._in_flight)
        blocked.extend(p for op in self._ops_in_flight for p in paths_of(op.event))
        guarded = self._apply_guard()
        for op in list(self._ops):
            if op in guarded:
                continue
            touched = paths_of(op.event)
            if op.due > now or _overlaps(touched, blocked) or self._deletion_waits(op, now):
                blocked.extend(touched)
                continue
            self._ops.remove(op)
            if isinstance(op.event, DirectoryMoved | DirectoryDeleted):
                self._ops_in_flight[op] = self._pool.submit(self._handle, op.event)
                blocked.extend(touched)
                continue
            try:
                outcome = self._handle(op.event)
            except Exception as e:  # noqa: BLE001 - retried later; later ops on these paths wait
                self._retry(op, e, now)
                self._ops.appendleft(op)
                blocked.extend(touched)
                continue
            self._count(outcome)
            self._ctx.catalog.journal_done(op.journal_ids)
            if outcome is not Outcome.UNCHANGED:
                log.info("%s %s", outcome.value, _describe(op.event))

    def _deletion_waits(self, op: _Op, now: float) -> bool:
        """A deletion waits while new files are being read: one of them may be this file, moved to
        another root, and can then take its vector along instead of running the model."""
        if not isinstance(op.event, _DELETIONS) or now - op.received >= MAX_DELETE_HOLD_S:
            return False
        return bool(self._in_flight or self._scans) or any(
            not isinstance(p.event, _SCANS) and p.due <= now + DELETE_HOLD_S for p in self._pending.values()
        )

    # ---- the mass-delete guard ---------------------------------------------------------------

    def _root_of(self, path: str) -> _Root | None:
        matches = [r for r in self._roots.values() if _under(path, r.path)]
        return max(matches, key=lambda r: len(r.path), default=None)

    def _apply_guard(self) -> set[_Op]:
        """Drop (and return) queued deletions that would delete a missing root's files, or a large
        share of a root's files at once. One count per root and pass, whatever the queue's length."""
        by_root: dict[str, list[_Op]] = {}
        for op in self._ops:
            if isinstance(op.event, _DELETIONS):
                root = self._root_of(paths_of(op.event)[0])
                if root is not None:
                    by_root.setdefault(root.path, []).append(op)
        held: set[_Op] = set()
        for root_path, ops in by_root.items():
            root = self._roots[root_path]
            reason = None
            if root.guard is not None:
                reason = root.guard  # held until `imgwatch index ROOT` or the root's return clears it
            elif not self._root_present(root) or any(paths_of(o.event)[0] == root.path for o in ops):
                reason = "the root is missing or its filesystem is not mounted"
            elif len(ops) >= self._settings.mass_delete_min_files or any(
                isinstance(o.event, DirectoryDeleted) for o in ops
            ):
                doomed = sum(
                    1
                    if isinstance(o.event, ImageDeleted)
                    else self._ctx.catalog.count_under(paths_of(o.event)[0])
                    for o in ops
                )
                known = self._ctx.catalog.count_under(root.path)
                if (
                    doomed >= self._settings.mass_delete_min_files
                    and doomed > self._settings.mass_delete_fraction * known
                ):
                    reason = f"{doomed} of its {known} files vanished at once"
            if reason is None:
                continue
            if root.guard != reason:
                log.warning(
                    "not deleting entries under %r: %s. They stay searchable; run `imgwatch index %s` to "
                    "apply the deletions if they are real",
                    root.path,
                    reason,
                    root.path,
                )
            root.guard = reason
            for op in ops:
                self._ops.remove(op)
                self._ctx.catalog.journal_done(op.journal_ids, error="held by the mass-delete guard")
                held.add(op)
        return held

    def _root_present(self, root: _Root) -> bool:
        """The root is a readable directory and, if it was a mount point, is mounted now."""
        if _device_of(root.path) is None:
            return False
        return not root.mount_point or os.path.ismount(root.path)

    def _check_roots(self) -> None:
        """Notice roots that went away (deleted, unmounted) or came back, and rescan returners."""
        for root in self._roots.values():
            if not root.watched:
                continue
            present = self._root_present(root)
            if present and root.watch is not None and not root.watch.alive():
                # watchdog stops watching a root that was deleted (and maybe recreated since).
                log.warning("the watch on %r stopped; watching it again and rescanning", root.path)
                root.watch.stop()
                root.watch = None
            if present and root.watch is None:
                log.info("root %r is back; rescanning it", root.path)
                root.guard = None
                self._start_watch(root)
                self._inbox.put((RescanRequested(root.path, source=Source.SCAN), []))
            elif not present and root.watch is not None:
                log.warning("root %r is gone or unmounted; keeping its entries until it is back", root.path)
                root.guard = "the root is missing or its filesystem is not mounted"
                root.watch.stop()
                root.watch = None

    def _start_watch(self, root: _Root) -> None:
        if not self._root_present(root):
            root.guard = "the root is missing or its filesystem is not mounted"
            log.warning("root %r is missing; watching for it to come back", root.path)
            return
        force = self._settings.poll or root.path in self._settings.poll_roots
        try:
            root.watch = watch_root(
                root.path,
                self._rules,
                self.submit,
                force_poll=force,
                poll_interval=self._settings.poll_interval,
            )
        except OSError as e:
            root.guard = f"cannot watch: {e.strerror or e}"
            log.error("cannot watch %r: %s", root.path, e)

    # ---- scans -------------------------------------------------------------------------------

    def _start_scan(self, key: str, waiting: _Pending) -> None:
        """Compare a directory with the catalog in a thread of its own: a big root takes a while, and
        the main loop must keep dispatching, answering signals and pinging systemd's watchdog."""
        path = paths_of(waiting.event)[0]
        root = self._root_of(path)
        if root is None or not os.path.isdir(path) or not self._root_present(root):
            self._ctx.catalog.journal_done(waiting.journal_ids)
            return
        future: Future[Plan] = Future()

        def scan() -> None:
            try:
                with self._serving.use() as ctx:
                    future.set_result(plan([path], self._rules, ctx))
            except BaseException as e:  # noqa: BLE001 - handed to the main loop
                future.set_exception(e)

        # A daemon thread: an unfinished scan must not hold up a SIGTERM; it is simply redone.
        threading.Thread(target=scan, name="imgwatch-scan", daemon=True).start()
        self._scans[key] = (future, waiting)

    def _reap_scans(self, now: float) -> None:
        for key, (future, waiting) in list(self._scans.items()):
            if not future.done():
                continue
            del self._scans[key]
            path = paths_of(waiting.event)[0]
            try:
                work = future.result()
            except Exception as e:  # noqa: BLE001 - a vanished or unreadable directory, a bug
                log.warning("cannot scan %r: %s", path, e)
                self._ctx.catalog.journal_done(waiting.journal_ids, error=str(e))
                continue
            for event in [*work.moves, *work.deletions]:
                self._accept(event, [])
            for event in work.changes:
                assert isinstance(event, ImageCreated | ImageModified)
                self._accept(replace(event, write_closed=True), [])
            self._ctx.catalog.journal_done(waiting.journal_ids)
            if work.total - work.unchanged:
                log.info(
                    "scan of %r: %d to do, %d unchanged", path, work.total - work.unchanged, work.unchanged
                )

    # ---- maintenance jobs --------------------------------------------------------------------

    def _start_scheduler(self) -> BackgroundScheduler:
        """APScheduler 3 in a background thread: one instance of a job at a time, missed runs
        coalesced into one, and the jobs themselves only queue scans or touch the stores briefly."""
        scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )
        for name, spec in self._settings.jobs.items():
            options = {k: v for k, v in spec.items() if k != "trigger"}
            if spec["trigger"] == "off":
                continue
            try:
                scheduler.add_job(self.run_job, spec["trigger"], args=[name], id=name, name=name, **options)
            except (TypeError, ValueError) as e:
                raise ConfigError("jobs", f"jobs.{name}: {e}") from e
        scheduler.start()
        return scheduler

    def run_job(self, name: str) -> dict[str, Any]:
        """Run a maintenance job now (scheduled, or asked for by ``imgwatch compact``/``reindex``)."""
        fatal = (StoreAuthError,)
        try:
            with self._serving.use() as ctx:
                if name == "compact":
                    return run_recorded(name, lambda: compact(ctx), ctx, reraise=fatal)

                def reconcile() -> dict[str, int]:
                    # Disk vs catalog goes through the daemon's own scans: the mass-delete guard applies.
                    watched = [r for r in self._roots.values() if r.watch is not None]
                    for root in watched:
                        self._inbox.put((RescanRequested(root.path, source=Source.SCAN), []))
                    return {"roots_rescanned": len(watched), **repair_vectors(ctx)}

                return run_recorded("reconcile", reconcile, ctx, reraise=fatal)
        except StoreAuthError as e:
            self._fail(e)
            raise
        finally:
            # A grown collection may want a bigger ANN index; PCA may have enough vectors now.
            self._reindex.wake()

    # ---- the HTTP surfaces, the metrics --------------------------------------------------------

    def _parts(self) -> DaemonParts:
        return DaemonParts(
            settings=self._settings,
            serving=self._serving,
            allowed=self._allowed,
            roots=list(self._roots),
            submit=self.submit,
            health=self._health,
            metrics=self._metrics.render,
            count_webhook_request=lambda method, status: self._metrics.webhook_requests.labels(
                method, str(status)
            ).inc(),
            status=self.status_report,
            index=self.index_roots,
            run_job=lambda name: (
                self.run_job(name) | ({"reindex": self._reindex.status()} if name == "reconcile" else {})
            ),
            forget_root=self.forget_root,
        )

    def _jobs_status(self) -> dict[str, Any]:
        runs = self._ctx.catalog.last_job_runs()
        jobs: dict[str, Any] = {}
        for name in self._settings.jobs:
            job = self._scheduler.get_job(name) if self._scheduler else None
            next_run = job.next_run_time.isoformat() if job and job.next_run_time else None
            jobs[name] = {"last_run": runs.get(name), "next_run": next_run}
        return jobs

    def _vector_count(self) -> int | None:
        try:
            return self._ctx.vectors.count()
        except Exception:  # noqa: BLE001 - a Milvus server that is down: report, do not fail status
            return None

    def _health(self) -> tuple[int, dict[str, Any]]:
        try:
            vectors = self._ctx.vectors.count()
        except Exception as e:  # noqa: BLE001 - reported, not raised: this is the health check
            return 503, {"status": "degraded", "store": f"unreachable: {type(e).__name__}"}
        return 200, {"status": "ok", "store": "reachable", "vectors": vectors, "queue": self._queue_depths()}

    def _queue_depths(self) -> dict[str, int]:
        return {
            "waiting": len(self._pending),
            "in_flight": len(self._in_flight),
            "ordered": len(self._ops) + len(self._ops_in_flight),
            "scanning": len(self._scans),
        }

    def _file_counts(self) -> dict[str, int]:
        return {state.value: n for state, n in self._ctx.catalog.counts().items()}

    # ---- what the control socket asks --------------------------------------------------------

    def status_report(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 1),
            "vectors": self._vector_count(),
            "model_runs": self._ctx.extractor.images_embedded,
            "roots": [
                {"path": r.path, "watch": r.watch.mode if r.watch else None, "guard": r.guard}
                for r in self._roots.values()
                if r.watched
            ],
            "s3_mounts": dict(self._settings.s3_mounts),
            "webhook": f"http://{self._settings.webhook}/events" if self._webhook else None,
            "search_page": self._search_page_url,
            "queue": self._queue_depths(),
            "journal": self._ctx.catalog.journal_counts(),
            **self._stats.snapshot(),
            "jobs": self._jobs_status(),
            "reindex": self._reindex.status(),
        }

    def index_roots(self, given: list[str]) -> dict[str, Any]:
        """``imgwatch index`` while the daemon runs; :class:`ImgwatchError` for a bad root."""
        from imgwatch.indexer import normalise_root

        roots = [normalise_root(root) for root in given]
        self._ctx.catalog.remember_roots(roots, "index")
        with self._serving.use() as ctx:
            summary = run_plan(plan(roots, self._rules, ctx), ctx, workers=self._settings.batch_size + 4)
        for root in self._roots.values():
            if any(_under(root.path, r) or _under(r, root.path) for r in roots):
                root.guard = None  # an explicit index applied (or re-checked) the deletions
        return summary.as_dict()

    def forget_root(self, root: str) -> dict[str, Any]:
        """``imgwatch forget ROOT`` while the daemon runs; refused for a root it watches."""
        from imgwatch.indexer import normalise_root
        from imgwatch.roots import forget_root

        path = normalise_root(root) if os.path.isdir(root) else os.path.abspath(root)
        if any(_under(path, r.path) or _under(r.path, path) for r in self._roots.values()):
            raise RootInUseError(path)
        with self._serving.use() as ctx:
            return {"root": path, "removed": forget_root(ctx, path)}


def _device_of(path: str) -> int | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev if os.path.isdir(path) else None


def _describe(event: ImageEvent) -> str:
    return " -> ".join(repr(p) for p in paths_of(event))
