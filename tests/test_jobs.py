"""Maintenance jobs on real stores: drift repair between disk, catalog and Milvus, and compaction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from imgwatch import jobs
from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.samples import photo
from imgwatch.scan import ScanRules
from imgwatch.search import search_files
from imgwatch.status import gather_status
from tests.conftest import index, jpeg_bytes, write_photo
from tests.harness import imgwatch_cli, wait_until


def _reconcile(ctx: Context, root: Path) -> dict[str, int]:
    return jobs.reconcile(ctx, [str(root)], ScanRules(), workers=8)


# The store-level jobs run on Milvus Lite and on a real server (conftest.milvus_ctx).


def test_vectors_deleted_behind_its_back_are_restored(milvus_ctx: Context, photos: Path) -> None:
    ctx = milvus_ctx
    index(ctx, photos)
    lost = [ctx.catalog.get(str(photos / name)) for name in ("photo1.jpg", "photo2.jpg")]
    assert all(lost)
    shutil_copy = photos / "photo1 copy.jpg"
    shutil_copy.write_bytes((photos / "photo1.jpg").read_bytes())
    index(ctx, photos)  # the copy shares photo1's content (and vector)
    ctx.vectors.delete([r.id for r in lost if r])
    runs = ctx.extractor.images_embedded

    counts = _reconcile(ctx, photos)

    assert counts["vectors_restored"] == 1  # photo1: copied back from its same-content twin
    assert counts["vectors_re_extracted"] == 1  # photo2: nothing to copy, so extracted again
    assert ctx.extractor.images_embedded == runs + 1
    assert ctx.vectors.count() == 9
    for name in ("photo1.jpg", "photo2.jpg"):
        assert search_files([str(photos / name)], ctx, k=1)[0].matches[0].path in (
            str(photos / name),
            str(shutil_copy),
        )


def test_stray_entities_are_removed(milvus_ctx: Context, photos: Path) -> None:
    ctx = milvus_ctx
    index(ctx, photos)
    ctx.vectors.upsert([(10_000_000, "/nowhere/ghost.jpg", np.ones(4096, dtype=np.float32) / 64)])

    counts = _reconcile(ctx, photos)

    assert counts["stray_vectors_deleted"] == 1
    assert ctx.vectors.count() == 8


def test_changes_made_while_down_and_fixed_failures_are_caught_up(ctx: Context, photos: Path) -> None:
    broken = photos / "broken.jpg"
    broken.write_bytes(jpeg_bytes(photo(70))[:400])
    index(ctx, photos)
    (photos / "photo0.jpg").unlink()
    write_photo(photos / "new.jpg", seed=71)
    broken.write_bytes(jpeg_bytes(photo(70)))

    counts = _reconcile(ctx, photos)

    assert (counts["files_added"], counts["files_removed"], counts["files_failed"]) == (2, 1, 0)
    assert ctx.vectors.count() == 9


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_compaction_after_many_deletes_answers_correctly_and_shrinks(
    milvus_ctx: Context, milvus_settings: Settings
) -> None:
    ctx, settings = milvus_ctx, milvus_settings
    rng = np.random.default_rng(0)
    vectors = rng.random((3000, 4096), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, 3000, 500):
        ctx.vectors.upsert(
            [(20_000_000 + i, f"/synthetic/{i}.jpg", vectors[i]) for i in range(start, start + 500)]
        )
    ctx.vectors.delete(range(20_000_000, 20_002_800))
    store = Path(settings.vectors_uri)
    before = _size(store) if settings.uses_milvus_lite else 0

    counts = jobs.compact(ctx)

    assert "milvus_compaction_job" in counts and "journal_rows_pruned" in counts
    assert ctx.vectors.count() == 200
    hits = ctx.vectors.search([vectors[2900]], k=1)[0]
    assert hits[0].id == 20_002_900
    if settings.uses_milvus_lite:
        assert _size(store) < before  # Milvus Lite 3.x rewrites its segments without the deleted rows
    else:
        assert counts["milvus_compaction_job"] > 0  # the server's job id: compact() was really sent


def test_job_runs_are_recorded_and_shown_by_status(ctx: Context, settings: Settings, photos: Path) -> None:
    report = jobs.run_recorded("compact", lambda: jobs.compact(ctx), ctx)
    failing = jobs.run_recorded("reconcile", lambda: 1 / 0, ctx)  # type: ignore[arg-type, return-value]

    assert report["outcome"] == "ok" and failing["outcome"] == "failed"
    runs = ctx.catalog.last_job_runs()
    assert runs["compact"]["outcome"] == "ok"
    assert runs["reconcile"]["error"] == "ZeroDivisionError: division by zero"
    assert gather_status(settings)["jobs"]["reconcile"]["last_run"]["outcome"] == "failed"


def test_compact_and_reindex_commands_go_through_the_daemon(daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "photos"
    for seed in range(3):
        write_photo(root / f"{seed}.jpg", seed=1700 + seed)
    daemon = daemon_factory(root)
    daemon.idle()

    def command(*args: str) -> dict[str, object]:
        result = imgwatch_cli(daemon.data_dir, *args, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    assert command("compact")["outcome"] == "ok"
    reindexed = command("reindex")
    assert reindexed["outcome"] == "ok" and reindexed["counts"] == {  # type: ignore[comparison-overlap]
        "roots_rescanned": 1,
        "stray_vectors_deleted": 0,
        "vectors_restored": 0,
        "vectors_re_extracted": 0,
    }
    jobs_status = wait_until(lambda: daemon.status()["jobs"], timeout=10)
    assert jobs_status["compact"]["last_run"]["outcome"] == "ok"
    assert jobs_status["reconcile"]["next_run"]  # scheduled hourly by default
    assert daemon.stop() == 0
    assert os.path.exists(daemon.data_dir / "catalog.sqlite3")
