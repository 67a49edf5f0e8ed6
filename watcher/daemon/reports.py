"""What the daemon says about itself: ``status`` on the control socket, ``/healthz`` on the webhook."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from imgwatch.config import Settings
from imgwatch.daemon.maintenance import Maintenance
from imgwatch.daemon.migration import LiveMigration
from imgwatch.daemon.watches import Watches
from imgwatch.reindex import BackgroundReindex
from imgwatch.services.lazy_extractor import model_loaded
from imgwatch.services.lazy_store import store_opening
from imgwatch.serving import Serving
from imgwatch.stats import DaemonStats


class Reports:
    def __init__(
        self,
        settings: Settings,
        serving: Serving,
        watches: Watches,
        queue: Callable[[], dict[str, int]],
        stats: DaemonStats,
        jobs: Maintenance,
        reindex: BackgroundReindex,
    ) -> None:
        self._settings = settings
        self._serving = serving
        self._watches = watches
        self._queue = queue
        self._stats = stats
        self._jobs = jobs
        self._reindex = reindex
        self.migration: LiveMigration | None = None
        """The daemon's ``imgwatch migrate``, once wired in: its state goes into :meth:`status`."""
        self._started = time.time()
        self.webhook_url: str | None = None
        self.search_page_url: str | None = None

    def status(self) -> dict[str, Any]:
        ctx = self._serving.current
        queue = self._queue()
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 1),
            # Exact once the queue is empty; while it is not, recounted at most once a second:
            # Milvus Lite counts by walking every entity, and status is polled.
            "vectors": self._vector_count(max_age=1.0 if any(queue.values()) else 0.0),
            # "opening" while the daemon loads its collection in the background (Milvus Lite reads
            # every vector into memory: about 30 s at 100,000 x 4096-d); searches wait for it.
            "store": "opening" if store_opening(ctx.vectors) else "open",
            "model_runs": ctx.extractor.images_embedded,
            # Loaded when the first image is due: a daemon with nothing to extract never loads it.
            "model_loaded": model_loaded(ctx.extractor),
            "roots": self._watches.report(),
            "s3_mounts": dict(self._settings.s3_mounts),
            "webhook": self.webhook_url,
            "search_page": self.search_page_url,
            "queue": queue,
            "journal": ctx.catalog.journal_counts(),
            **self._stats.snapshot(),
            "jobs": self._jobs.status(ctx.catalog.last_job_runs()),
            "reindex": self._reindex.status(),
            # The running (or last) `imgwatch migrate` this daemon carried out: phase, done/total, target.
            "migration": self.migration.status() if self.migration is not None else None,
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        if store_opening(self._serving.current.vectors):
            return 503, {"status": "starting", "store": "opening", "queue": self._queue()}
        try:
            vectors = self._serving.current.vectors.count()
        except Exception as e:  # noqa: BLE001 - reported, not raised: this is the health check
            return 503, {"status": "degraded", "store": f"unreachable: {type(e).__name__}"}
        return 200, {"status": "ok", "store": "reachable", "vectors": vectors, "queue": self._queue()}

    def _vector_count(self, max_age: float) -> int | None:
        if store_opening(self._serving.current.vectors):
            return None  # status must not wait for Milvus Lite to load (tens of seconds at 100k)
        try:
            return self._serving.current.vectors.count(max_age)
        except Exception:  # noqa: BLE001 - a Milvus server that is down: report, do not fail status
            return None
