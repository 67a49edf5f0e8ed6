"""Maintenance jobs: compaction and reconcile (drift repair between disk, catalog and Milvus).

The daemon runs them on a schedule (APScheduler); ``imgwatch compact`` and ``imgwatch reindex`` run
them on demand. Each run is recorded in the catalog, and ``status`` shows the latest one per job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from imgwatch.context import Context
from imgwatch.events import ImageModified, Outcome, Source
from imgwatch.indexer import plan, run_plan
from imgwatch.runtime import dispatch
from imgwatch.scan import ScanRules

log = logging.getLogger(__name__)

JOURNAL_RETENTION = timedelta(days=7)

Job = Callable[[], Mapping[str, int]]


def compact(ctx: Context, *, journal_retention: timedelta = JOURNAL_RETENTION) -> dict[str, int]:
    """Milvus flush + compaction (it shrinks Milvus Lite 3.x's files too), journal pruning, SQLite upkeep."""
    counts = dict(ctx.vectors.compact())
    counts["journal_rows_pruned"] = ctx.catalog.prune_journal(datetime.now(UTC) - journal_retention)
    counts.update(ctx.catalog.optimise_storage())
    return counts


def repair_vectors(ctx: Context) -> dict[str, int]:
    """Make Milvus hold exactly the vectors the catalog vouches for.

    Entities with no catalog row (left by a crash or an outside hand) are deleted. Indexed rows whose
    entity is missing get it back: copied from another file with the same content where one has it,
    else extracted again. Rows in flight (pending) are left alone: their handler is still at work.
    """
    in_milvus = ctx.vectors.all_ids()
    vouched = ctx.catalog.ids_with_vectors()
    strays = in_milvus - ctx.catalog.all_ids()
    ctx.vectors.delete(sorted(strays))
    missing = [record for key, record in vouched.items() if key not in in_milvus]
    restored = extracted = 0
    for record in missing:
        twin = ctx.catalog.find_by_hash(
            record.content_hash or "", exclude_path=record.path, signature=record.signature or ""
        )
        vector = ctx.vectors.get_vectors([twin.id]).get(twin.id) if twin and twin.id in in_milvus else None
        if vector is not None:
            ctx.vectors.upsert([(record.id, record.path, vector)])
            restored += 1
            continue
        # No copy to take it from: extract it again (the handler re-reads the file).
        ctx.catalog.mark_pending(record.path, 0, 0)
        dispatch(ImageModified(record.path, source=Source.SCAN), ctx)
        extracted += 1
    return {
        "stray_vectors_deleted": len(strays),
        "vectors_restored": restored,
        "vectors_re_extracted": extracted,
    }


def reconcile(ctx: Context, roots: Sequence[str], rules: ScanRules, *, workers: int) -> dict[str, int]:
    """Disk vs catalog (like ``index``: new, changed, moved, vanished and failed files), then catalog vs
    Milvus (:func:`repair_vectors`)."""
    summary = run_plan(plan(list(roots), rules, ctx), ctx, workers=workers)
    counts = {f"files_{outcome.value}": int(getattr(summary, outcome.value)) for outcome in Outcome}
    counts["files_skipped"] = len(summary.skipped)
    counts["files_seconds"] = int(summary.seconds)
    counts.update(repair_vectors(ctx))
    return counts


def run_recorded(
    name: str, job: Job, ctx: Context, *, reraise: tuple[type[Exception], ...] = ()
) -> dict[str, object]:
    """Run ``job`` and record its start, duration, outcome and counts in the catalog.

    Exceptions of the ``reraise`` types are not failures (e.g. "not enough vectors yet"): they go to
    the caller unrecorded."""
    started, clock = datetime.now(UTC), time.monotonic()
    try:
        counts, outcome, error = dict(job()), "ok", None
    except reraise:
        raise
    except Exception as e:
        log.exception("job %s failed", name)
        counts, outcome, error = {}, "failed", f"{type(e).__name__}: {e}"
    duration = time.monotonic() - clock
    ctx.catalog.record_job_run(name, started, duration, outcome, counts, error)
    log.info("job %s: %s in %.1f s %s", name, outcome, duration, counts)
    return {
        "job": name,
        "outcome": outcome,
        "duration_s": round(duration, 3),
        "counts": counts,
        "error": error,
    }
