"""Maintenance jobs inside the daemon: APScheduler 3 runs compaction and reconcile on their triggers;
``imgwatch compact``/``reindex`` sent to the daemon run the same jobs at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from imgwatch.config import Settings
from imgwatch.errors import ConfigError, DaemonStoppingError, StoreAuthError
from imgwatch.jobs import compact, repair_vectors, run_recorded
from imgwatch.reindex import BackgroundReindex
from imgwatch.serving import Serving

_FATAL = (StoreAuthError,)


class Maintenance:
    def __init__(
        self,
        settings: Settings,
        serving: Serving,
        reindex: BackgroundReindex,
        rescan: Callable[[], int],
        fail: Callable[[StoreAuthError], None],
    ) -> None:
        self._settings = settings
        self._serving = serving
        self._reindex = reindex
        self._rescan = rescan
        self._fail = fail
        self._scheduler: BackgroundScheduler | None = None
        self._running = 0
        self._stopped = False
        self._changed = threading.Condition()

    def start(self) -> None:
        """One instance of a job at a time, missed runs coalesced into one; the jobs themselves only
        queue scans or touch the stores briefly."""
        scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600}
        )
        for name, spec in self._settings.jobs.items():
            if spec["trigger"] == "off":
                continue
            options = {k: v for k, v in spec.items() if k != "trigger"}
            try:
                scheduler.add_job(self.run, spec["trigger"], args=[name], id=name, name=name, **options)
            except (TypeError, ValueError) as e:
                raise ConfigError("jobs", f"jobs.{name}: {e}") from e
        scheduler.start()
        self._scheduler = scheduler

    def run(self, name: str) -> dict[str, Any]:
        """Run job ``name`` now, in the calling thread."""
        with self._changed:
            if self._stopped:
                raise DaemonStoppingError(name)
            self._running += 1
        try:
            with self._serving.use() as ctx:
                if name == "compact":
                    return run_recorded(name, lambda: compact(ctx), ctx, reraise=_FATAL)

                def reconcile() -> dict[str, int]:
                    # Disk vs catalog goes through the daemon's own scans: the mass-delete guard applies.
                    return {"roots_rescanned": self._rescan(), **repair_vectors(ctx)}

                return run_recorded("reconcile", reconcile, ctx, reraise=_FATAL)
        except StoreAuthError as e:
            self._fail(e)
            raise
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()
            # A grown collection may want a bigger ANN index; PCA may have enough vectors now.
            self._reindex.wake()

    def status(self, last_runs: dict[str, Any]) -> dict[str, Any]:
        jobs: dict[str, Any] = {}
        for name in self._settings.jobs:
            job = self._scheduler.get_job(name) if self._scheduler else None
            next_run = job.next_run_time.isoformat() if job and job.next_run_time else None
            jobs[name] = {"last_run": last_runs.get(name), "next_run": next_run}
        return jobs

    def stop(self, deadline: float) -> bool:
        """Start no more jobs, and wait for a running one until ``deadline``; False if it still runs."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        with self._changed:
            self._stopped = True
            return self._changed.wait_for(lambda: self._running == 0, max(0.0, deadline - time.monotonic()))
