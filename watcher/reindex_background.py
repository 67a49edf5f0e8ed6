"""The daemon's reindex: a thread that runs a :class:`~imgwatch.reindex.Reindexer` whenever a step is
pending, and retries after failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgwatch.errors import StoreAuthError
from imgwatch.reindex_steps import SharedCollectionError
from imgwatch.services.build import Services

if TYPE_CHECKING:
    from imgwatch.reindex import Reindexer

# The reindex's log lines keep the one name they always had, whichever module writes them.
log = logging.getLogger("imgwatch.reindex")


class BackgroundReindex:
    """Runs a :class:`Reindexer` in a thread of its own whenever a step is pending (checked at start,
    and whenever :meth:`wake` is called: after each maintenance job), and retries after failures.

    A refused Milvus token is not retried: it goes to ``on_fatal`` (the daemon stops) and the thread
    ends."""

    RETRY_S = 300.0
    PAUSED_RETRY_S = 5.0

    def __init__(
        self,
        reindexer: Reindexer,
        services: Services,
        *,
        on_fatal: Callable[[StoreAuthError], None] | None = None,
        paused: Callable[[], str | None] | None = None,
    ) -> None:
        self._reindexer = reindexer
        self._services = services
        self._on_fatal = on_fatal
        self._paused = paused
        """Says why no reindex may start now (a migration copies the index), or None."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._waiting: str | None = None
        # A daemon thread: a reindex stopped half-way resumes from the ledger on the next start.
        self._thread = threading.Thread(target=self._loop, name="imgwatch-reindex", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # not started when the daemon's start failed before it
            self._thread.join(timeout)

    def status(self) -> dict[str, Any] | None:
        report = self._reindexer.progress()
        if self._waiting is not None:
            report = (report or {}) | {"phase": "waiting", "reason": self._waiting}
        return report

    def _loop(self) -> None:
        from imgwatch.jobs import run_recorded
        from imgwatch.services.pca import NotEnoughSamplesError

        reraise = (NotEnoughSamplesError, SharedCollectionError)
        while not self._stop.is_set():
            self._wake.clear()
            delay: float | None = None
            try:
                due = self._reindexer.pending() is not None
                if due and self._paused is not None and (reason := self._paused()) is not None:
                    # Its switch would replace the store the copy mirrors into: after the copy.
                    self._waiting, delay = reason, self.PAUSED_RETRY_S
                elif due:
                    self._waiting = None
                    report = run_recorded(
                        "reindex",
                        lambda: self._reindexer.run(self._stop),
                        self._services.ctx,
                        reraise=(*reraise, StoreAuthError),
                    )
                    if report["outcome"] != "ok":
                        delay = self.RETRY_S
            except StoreAuthError as e:
                if self._on_fatal is None:
                    log.error("reindex: %s; not retrying", e)
                else:
                    self._on_fatal(e)
                return
            except reraise as e:
                self._waiting = str(e)
            except Exception:
                log.exception("reindex check failed; retrying in %.0f s", self.RETRY_S)
                delay = self.RETRY_S
            self._wake.wait(delay)
