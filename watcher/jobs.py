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
from imgwatch.services.abc import FileRecord, FileState

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
    The catalog is read before Milvus, so a file indexed meanwhile does not look like a missing
    vector; each repair holds its path (as handlers do) and looks again before acting.
    """
    vouched = ctx.catalog.ids_with_vectors()
    in_milvus = ctx.vectors.all_ids()
    # Read after Milvus: an entity written meanwhile has its (pending or indexed) row by now.
    strays = in_milvus - ctx.catalog.all_ids()
    ctx.vectors.delete(sorted(strays))
    counts = {"stray_vectors_deleted": len(strays), "vectors_restored": 0, "vectors_re_extracted": 0}
    failed = 0
    for record in (record for key, record in vouched.items() if key not in in_milvus):
        with ctx.paths.hold([record.path]):
            done = _restore(record, ctx)
        if done is None:
            continue
        if done is Outcome.FAILED:
            failed += 1
        else:
            counts["vectors_restored" if done is Outcome.MOVED else "vectors_re_extracted"] += 1
    return counts | ({"vectors_not_restored": failed} if failed else {})


def _restore(record: FileRecord, ctx: Context) -> Outcome | None:
    """Give ``record`` its missing vector back: ``MOVED`` when copied from a twin, the handler's
    outcome when extracted again, None when someone else already did (or the file changed)."""
    current = ctx.catalog.get(record.path)
    if current is None or current.id != record.id or current.state is not FileState.INDEXED:
        return None
    if not current.has_vector or ctx.vectors.get_vectors([record.id]):
        return None
    twin = ctx.catalog.find_by_hash(
        record.content_hash or "", exclude_path=record.path, signature=record.signature or ""
    )
    vector = ctx.vectors.get_vectors([twin.id]).get(twin.id) if twin is not None else None
    if vector is not None:
        ctx.vectors.upsert([(record.id, record.path, vector)])
        return Outcome.MOVED
    # No copy to take it from: extract it again (the handler re-reads the file).
    ctx.catalog.mark_pending(record.path, 0, 0)
    return dispatch(ImageModified(record.path, source=Source.SCAN), ctx)


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
