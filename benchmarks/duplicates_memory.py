"""Time and peak memory of the `imgwatch duplicates` pass over 10k and 50k synthetic 4096-d vectors.

For each size, one subprocess fills a Milvus Lite collection and a catalog in a temp dir (random unit
vectors; in every 100, two noisy copies of the first, i.e. n/100 planted groups of 3), and a
fresh subprocess opens them and runs :func:`imgwatch.duplicates.find_duplicates`. That process
reports its resident memory after opening the stores (Milvus Lite runs inside it and holds the
loaded collection, which grows with n whatever our pass does), then resets the kernel's high-water
mark (``/proc/self/clear_refs``) and reads ``VmHWM`` after the pass: the difference is the pass's
own working memory, which should not grow with n. ``RssAnon`` (the process's own pages, not file
pages it maps) is reported next to it.

``--algorithm search`` runs the pass this one replaced (each batch searched against the whole
collection through the vector store; kept in tests/test_duplicates_scale.py as the reference), for a
side-by-side figure; ``--dimension 512`` stands for PCA-512 vectors (same code, 8x less arithmetic).

    python benchmarks/duplicates_memory.py [--sizes 10000 50000] [--batch-size 256]
        [--algorithm blocked|search] [--dimension 4096]

Results accumulate in benchmarks/results/duplicates_memory.json (one entry per index type, batch
size and collection size) and benchmarks/results/duplicates_memory.table.md; the discussion is in
benchmarks/results/duplicates_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DIMENSION = 4096  # the default; --dimension changes it in the parent and its children
CHUNK = 1000  # vectors generated and inserted at a time (a multiple of 100: groups stay in a chunk)
GROUP_EVERY = 100
COPIES = 2
THRESHOLD = 0.95
RESULTS = Path(__file__).parent / "results"


def _chunk(index: int, dimension: int) -> np.ndarray:
    """Chunk ``index`` of the synthetic collection: unit vectors, with a near-copy group every 100."""
    rng = np.random.default_rng(index)
    vectors = rng.standard_normal((CHUNK, dimension)).astype(np.float32)
    for start in range(0, CHUNK, GROUP_EVERY):
        base = vectors[start] / np.linalg.norm(vectors[start])
        for copy in range(1, COPIES + 1):
            # Noise of norm ~0.1 next to a unit vector: cosine ~0.995, far above THRESHOLD, while two
            # unrelated random vectors score about 0 +- 1/sqrt(d) (0.016 at 4096-d, 0.044 at 512-d).
            noise = rng.standard_normal(dimension).astype(np.float32) * (0.1 / dimension**0.5)
            vectors[start + copy] = base + noise
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def fill(data_dir: Path, n: int, index_type: str, dimension: int) -> None:
    import sqlalchemy as sa

    from imgwatch.services.catalog import FILES, open_catalog
    from imgwatch.services.vectors import MilvusVectorStore

    catalog = open_catalog(data_dir / "catalog.db")
    store = MilvusVectorStore(str(data_dir / "vectors.db"), dimension=dimension, index_type=index_type)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        for index in range(n // CHUNK):
            vectors = _chunk(index, dimension)
            keys = range(index * CHUNK + 1, (index + 1) * CHUNK + 1)
            paths = [f"/synthetic/{key:06d}.jpg" for key in keys]
            store.upsert(list(zip(keys, paths, vectors, strict=True)))
            rows = [
                {
                    "id": key,
                    "path": path.encode(),
                    "size": 1,
                    "mtime_ns": 0,
                    "content_hash": f"{key:032x}",
                    "state": "indexed",
                    "has_vector": True,
                    "signature": "synthetic",
                    "created_at": now,
                    "updated_at": now,
                    "indexed_at": now,
                }
                for key, path in zip(keys, paths, strict=True)
            ]
            with catalog.engine.begin() as conn:
                conn.execute(sa.insert(FILES), rows)
        # Seal the segments, as a long-lived index would be: Milvus Lite scans unsealed (growing)
        # data row by row, which is several times slower to iterate and search.
        store.compact()
    finally:
        store.close()
        catalog.close()


def measure(
    data_dir: Path, batch_size: int, index_type: str, dimension: int, algorithm: str
) -> dict[str, object]:
    import logging

    from imgwatch.context import Context
    from imgwatch.duplicates import DuplicatePass, duplicate_pass
    from imgwatch.services.abc import ExtractorSignature
    from imgwatch.services.build import NoModel
    from imgwatch.services.catalog import open_catalog
    from imgwatch.services.files import LocalFileReader
    from imgwatch.services.vectors import MilvusVectorStore

    catalog = open_catalog(data_dir / "catalog.db")
    store = MilvusVectorStore(str(data_dir / "vectors.db"), dimension=dimension, index_type=index_type)
    signature = ExtractorSignature("synthetic", "synthetic", "none", "none", dimension, "fp32")
    ctx = Context(catalog, store, NoModel(signature), LocalFileReader(1))
    run_pass: Callable[..., DuplicatePass] = duplicate_pass
    if algorithm == "search":
        from tests.test_duplicates_scale import _search_pass

        run_pass = _search_pass
    timings: dict[str, float] = {}

    class Timings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            timings.update({k: getattr(record, k) for k in ("read_s", "score_s") if hasattr(record, k)})

    logging.getLogger("imgwatch.duplicates").addHandler(Timings())
    logging.getLogger("imgwatch.duplicates").setLevel(logging.INFO)
    try:
        opened_rss = _status_kb("VmRSS")
        opened_anon = _status_kb("RssAnon")
        opened_hwm = _status_kb("VmHWM")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            reset = True
        except OSError:
            reset = False
        started = time.perf_counter()
        groups = run_pass(ctx, threshold=THRESHOLD, batch_size=batch_size).groups
        seconds = time.perf_counter() - started
        peak = _status_kb("VmHWM")
        end_anon = _status_kb("RssAnon")
    finally:
        store.close()
        catalog.close()
    return {
        "rss_after_open_kb": opened_rss,
        "peak_before_pass_kb": opened_hwm,
        "hwm_reset": reset,
        "peak_during_pass_kb": peak,
        "pass_over_open_kb": peak - opened_rss,
        "pass_seconds": round(seconds, 1),
        "read_seconds": round(timings["read_s"], 1) if "read_s" in timings else None,
        "score_seconds": round(timings["score_s"], 1) if "score_s" in timings else None,
        "rss_anon_after_open_kb": opened_anon,
        "rss_anon_after_pass_kb": end_anon,
        "groups": len(groups),
        "group_sizes": sorted({len(g.paths) for g in groups}),
    }


def _child(*args: str) -> tuple[str, int]:
    """Run this script as a child; returns its stdout and its own peak RSS (kB, from wait4)."""
    # The checkout this script belongs to, ahead of any installed copy of imgwatch.
    path = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    process = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"child {args[0]} failed with {process.returncode}")
    return out, int(usage.ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--index-type", default="FLAT", help="the collection's index (imgwatch's index_type)")
    parser.add_argument("--dimension", type=int, default=DIMENSION, help="4096 (fc7) or 512 (PCA-512)")
    parser.add_argument(
        "--algorithm",
        choices=["blocked", "search"],
        default="blocked",
        help="search: the pass before issue 15",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, data_dir, *rest = args.child
        if kind == "fill":
            fill(Path(data_dir), int(rest[0]), rest[1], int(rest[2]))
        else:
            print(json.dumps(measure(Path(data_dir), int(rest[0]), rest[1], int(rest[2]), rest[3])))
        return

    machine = f"{_cpu_model()}, {len(os.sched_getaffinity(0))} CPUs"
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="imgwatch-dups-") as tmp:
            started = time.perf_counter()
            _child("fill", tmp, str(n), args.index_type, str(args.dimension))
            fill_s = time.perf_counter() - started
            out, child_peak = _child(
                "measure", tmp, str(args.batch_size), args.index_type, str(args.dimension), args.algorithm
            )
        run: dict[str, object] = {
            "algorithm": args.algorithm,
            "dimension": args.dimension,
            "index_type": args.index_type,
            "batch_size": args.batch_size,
            "vectors": n,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "fill_seconds": round(fill_s, 1),
            "process_peak_kb": child_peak,
        }
        run.update(json.loads(out))
        run["all_vectors_in_memory_kb"] = n * args.dimension * 4 // 1024
        print(json.dumps(run), flush=True)
        _record(run)


def _record(run: dict[str, object]) -> None:
    """Add ``run`` to the results (replacing an earlier run of the same setup) and redo the table."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "duplicates_memory.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    for r in runs:  # runs from before issue 15 were all the search pass at 4096-d
        r.setdefault("algorithm", "search")
        r.setdefault("dimension", DIMENSION)
    same = ("algorithm", "dimension", "index_type", "batch_size", "vectors")
    runs = [r for r in runs if any(r[k] != run[k] for k in same)] + [run]
    runs.sort(key=lambda r: tuple(str(r[k]) if k != "vectors" else f"{r[k]:09d}" for k in same))
    path.write_text(json.dumps({"threshold": THRESHOLD, "runs": runs}, indent=2) + "\n")
    mib = 1024
    lines = [
        "| pass | d | index | vectors | batch | RSS after open | peak during pass "
        "| pass's own (peak - open) | RssAnon open -> end | all vectors as float32 "
        "| pass time (read + score) | groups found | machine |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        anon = (
            f"{r['rss_anon_after_open_kb'] // mib} -> {r['rss_anon_after_pass_kb'] // mib} MiB"
            if "rss_anon_after_open_kb" in r
            else "-"
        )
        split = f" ({r['read_seconds']} + {r['score_seconds']})" if r.get("read_seconds") is not None else ""
        lines.append(
            f"| {r['algorithm']} | {r['dimension']} | {r['index_type']} | {r['vectors']:,} "
            f"| {r['batch_size']} "
            f"| {r['rss_after_open_kb'] // mib} MiB | {r['peak_during_pass_kb'] // mib} MiB "
            f"| {r['pass_over_open_kb'] // mib} MiB "
            f"| {anon} | {r['all_vectors_in_memory_kb'] // mib} MiB | {r['pass_seconds']} s{split} "
            f"| {r['groups']} | {r['machine']} |"
        )
    (RESULTS / "duplicates_memory.table.md").write_text("\n".join(lines) + "\n")


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
    return names[0] if names else platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
