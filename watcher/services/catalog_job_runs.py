"""The catalog's record of maintenance job runs (migration 0003): what ``status`` shows of them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgwatch.services.catalog_tables import JOB_RUNS


class CatalogJobRuns:
    """The job runs' part of :class:`~imgwatch.services.catalog.SQLiteCatalog` (mixed into it)."""

    _engine: Engine

    def record_job_run(
        self,
        job: str,
        started_at: datetime,
        duration_s: float,
        outcome: str,
        counts: Mapping[str, int],
        error: str | None,
    ) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(JOB_RUNS).values(
                    job=job,
                    started_at=started_at.astimezone(UTC).replace(tzinfo=None),
                    duration_s=duration_s,
                    outcome=outcome,
                    counts=json.dumps(dict(counts)),
                    error=error,
                )
            )

    def last_job_runs(self) -> dict[str, dict[str, object]]:
        """The latest run of each job: started_at (ISO, UTC), duration_s, outcome, counts, error."""
        latest = sa.select(sa.func.max(JOB_RUNS.c.id)).group_by(JOB_RUNS.c.job)
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(JOB_RUNS).where(JOB_RUNS.c.id.in_(latest))).all()
        return {
            row.job: {
                "started_at": row.started_at.replace(tzinfo=UTC).isoformat(),
                "duration_s": round(row.duration_s, 3),
                "outcome": row.outcome,
                "counts": json.loads(row.counts),
                "error": row.error,
            }
            for row in rows
        }
