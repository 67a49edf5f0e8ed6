"""Milvus Lite's index types side by side: FLAT, HNSW and IVF_FLAT, by vector size and collection size.

For the automatic move from FLAT to an ANN index: which type, and from what size on. Each
configuration (dimension, vectors, index type) gets a fresh Milvus Lite file in a temp dir, written
and searched through pymilvus' ``MilvusClient`` the way imgwatch's vector store does (the schema of
``imgwatch.services.milvus_collection``, ``consistency_level="Strong"``, upserts of 500 rows, vectors
sent as lists; index and search parameters as imgwatch sets them: HNSW M=16, efConstruction=200,
ef=64; IVF_FLAT nlist = 4 * sqrt(N), nprobe = max(16, nlist // 32)). Measured per configuration:

- **insert**: vectors/s of the upserts (Lite flushes a segment by itself each time its MemTable
  reaches 128 MiB, and then builds that segment's index on its background thread while the upserts
  go on: that cost lands here);
- **ready**: after the last upsert, ``flush`` and then the wait for Lite's background worker
  (compaction, then an index for every segment that lacks one): from then on every segment is
  searched through its index. Lite builds a segment's index there, after the flush that wrote it (or
  the compaction that merged it); ``load_collection`` only builds what is still missing, and
  otherwise reads the index files written then. ``reload`` is a release and load in the same process;
  ``fresh open`` is a new process opening the file and loading it (a restarted daemon);
- **search**: one query per call, k=10, p50 and p95 over ``--queries`` queries after a warm-up; two
  kinds of query: new vectors from the same distribution (recall@10 against numpy's exact top 10)
  and near copies of stored vectors (noise to cosine ~0.95, renormalised: recall@1 is the share
  whose original comes first);
- a **sweep** of HNSW's ef and IVF's nprobe on the same loaded collection: do they need to grow?
- **memory**: the process's RSS after load (each configuration runs in its own subprocesses, so it
  is its own); a configuration is stopped if a process passes ``--rss-limit-gib``;
- **disk**: the Lite directory's size after the flush, and the index files' share of it.

The vectors are synthetic but shaped like VGG16 fc7 activations: non-negative after a ReLU (about
68 % zeros), drawn from a mixture of 200 sparse cluster centres of uneven weight plus noise,
L2-normalised (cosine within a cluster ~0.61, between clusters ~0.29). Seeded: every run and every
index type sees the same vectors.

    python benchmarks/index_types.py            # 512-d: 10k, 30k, 100k; 4096-d: 10k, 30k
    python benchmarks/index_types.py --quick    # 2,000 vectors only: a smoke run

Writes ``results/index_types.json`` and ``results/index_types.md`` (``IMGWATCH_BENCH_RESULTS``
overrides the folder) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
COLLECTION = "imgwatch"
SEED = 20261202
BATCH = 500  # rows per upsert, as the daemon's batched writes send them
CENTRES = 200
K = 10
NEAR_COSINE = 0.95
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
HNSW_EFS = (16, 32, 64, 128, 256)
IVF_NPROBES = (4, 8, 16, 32, 64, 128)


# ── the vectors ───────────────────────────────────────────────────────────────────────────────


def _centres(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The mixture: sparse non-negative centres sharing a common part, and their uneven weights."""
    rng = np.random.default_rng((SEED, dim))
    own = rng.gamma(1.0, 1.0, (CENTRES, dim)).astype(np.float32) * (rng.random((CENTRES, dim)) < 0.3)
    shared = rng.gamma(1.0, 1.0, dim).astype(np.float32) * (rng.random(dim) < 0.3)
    return own + 0.7 * shared, rng.dirichlet(np.full(CENTRES, 0.5))


def _draw(mixture: tuple[np.ndarray, np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    centres, weights = mixture
    label = rng.choice(len(weights), count, p=weights)
    scale = rng.gamma(4.0, 0.25, (count, 1)).astype(np.float32)
    noise = rng.standard_normal((count, centres.shape[1]), dtype=np.float32)
    x = np.maximum(centres[label] * scale + 0.9 * noise - 0.9, 0.0)  # the ReLU: ~68 % zeros
    unit: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def _batch(mixture: tuple[np.ndarray, np.ndarray], dim: int, start: int, count: int) -> np.ndarray:
    """Rows ``start .. start + count`` of the collection: the same every time they are made."""
    return _draw(mixture, count, np.random.default_rng((SEED, dim, 1, start)))


def _near_copies(originals: np.ndarray, dim: int) -> np.ndarray:
    """Each original plus Gaussian noise of norm tan(acos 0.95), renormalised: cosine ~0.95 to it."""
    rng = np.random.default_rng((SEED, dim, 3))
    sigma = (1 / NEAR_COSINE**2 - 1) ** 0.5 / dim**0.5
    noisy = originals + sigma * rng.standard_normal(originals.shape, dtype=np.float32)
    unit: np.ndarray = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return unit


# ── one configuration, in its own process ─────────────────────────────────────────────────────


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) // 1024
    return fields


def _engine(uri: str) -> Any:
    """Lite's in-process collection object: read only, to see its segments and their indexes."""
    from milvus_lite.server_manager import server_manager_instance

    _server, db, _port = server_manager_instance._servers[os.path.abspath(uri)]
    return db.get_collection(COLLECTION)


def _segments(engine: Any) -> list[dict[str, Any]]:
    out = []
    for seg in list(engine._segment_cache.values()):
        index = seg.indexes.get("vector")
        entry: dict[str, Any] = {"rows": int(seg.num_rows), "indexed": index is not None}
        if index is not None and hasattr(index, "_index") and hasattr(index._index, "nlist"):
            entry["nlist"] = int(index._index.nlist)
        out.append(entry)
    return out


def _index_params(index_type: str, vectors: int) -> dict[str, Any]:
    from imgwatch.services.milvus_collection import auto_index_params

    return auto_index_params(index_type, vectors)


def _search_params(index_type: str, index_params: dict[str, Any], knob: int | None = None) -> dict[str, Any]:
    """As ``MilvusCollection._search_params`` sets them for k=10, or with ``knob`` as ef / nprobe."""
    if index_type == "HNSW":
        return {"ef": knob or max(64, K)}
    if index_type == "IVF_FLAT":
        nlist = int(index_params["nlist"])
        return {"nprobe": min(nlist, knob or max(16, nlist // 32))}
    return {}


def _create(client: Any, dim: int, index_type: str, index_params: dict[str, Any], *, flattened: bool) -> None:
    """The collection as ``MilvusCollection._ensure_collection`` makes it, but for the index's params.

    pymilvus 3.0.2 sends ``add_index(params={"nlist": 179})`` as top-level keys of the request, and
    Milvus Lite 3.2.2 reads only a JSON ``params`` key (``kv_pairs_to_index_params_dict``): the
    params are dropped and Lite's defaults used (HNSW M=16, efConstruction=200; IVF nlist=128 at any
    size). Nested under ``params`` they arrive. ``flattened`` sends them as imgwatch does today."""
    from pymilvus import DataType

    from imgwatch.services.milvus_collection import METRIC, NODE_MAX_BYTES, PATH_MAX_BYTES

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("path", DataType.VARCHAR, max_length=PATH_MAX_BYTES)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("node", DataType.VARCHAR, max_length=NODE_MAX_BYTES)
    index = client.prepare_index_params()
    params = index_params if flattened or not index_params else {"params": index_params}
    index.add_index(field_name="vector", index_type=index_type, metric_type=METRIC, params=params)
    client.create_collection(COLLECTION, schema=schema, index_params=index, consistency_level="Strong")


def _search(client: Any, query: np.ndarray, params: dict[str, Any]) -> tuple[float, list[int]]:
    clock = time.perf_counter()
    [hits] = client.search(
        COLLECTION,
        data=[np.asarray(query, dtype=np.float32).tolist()],
        limit=K,
        output_fields=["path", "node"],
        search_params={"metric_type": "IP", "params": params},
        consistency_level="Strong",
    )
    return time.perf_counter() - clock, [int(hit["id"]) for hit in hits]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _du(path: Path, suffix: str = "") -> int:
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file())


def _stage(config: dict[str, Any], name: str) -> None:
    """Where the worker is: the parent names it if it has to stop the process."""
    Path(config["stage_file"]).write_text(name)


def _queries(config: dict[str, Any], mixture: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    dim, size, count = config["dim"], config["vectors"], config["queries"]
    picks = np.sort(np.random.default_rng((SEED, dim, 2)).choice(size, count, replace=False))
    return {"fresh": _draw(mixture, count, np.random.default_rng((SEED, dim, 4))), "near_ids": picks}


def build(config: dict[str, Any]) -> dict[str, Any]:
    """Create, fill, flush, index, reload and search one configuration; the figures."""
    from pymilvus import MilvusClient

    dim, size, index_type = config["dim"], config["vectors"], config["index_type"]
    baseline = _status()
    mixture = _centres(dim)
    queries = _queries(config, mixture)
    near_ids = set(queries["near_ids"].tolist())
    originals: dict[int, np.ndarray] = {}
    index_params = _index_params(index_type, size)
    uri = config["uri"]
    client = MilvusClient(uri=uri)
    _create(client, dim, index_type, index_params, flattened=config["flattened_params"])
    engine = _engine(uri)
    lite_params = dict(engine._index_specs["vector"].build_params)

    _stage(config, "insert")
    insert_s = 0.0
    for start in range(0, size, BATCH):
        vectors = _batch(mixture, dim, start, min(BATCH, size - start))
        originals |= {i: vectors[i - start] for i in near_ids if start <= i < start + len(vectors)}
        clock = time.perf_counter()
        rows = [
            {"id": start + i, "path": f"/synthetic/{start + i:07d}.jpg", "vector": v.tolist(), "node": ""}
            for i, v in enumerate(vectors)
        ]
        client.upsert(COLLECTION, rows)
        insert_s += time.perf_counter() - clock
    after_insert = _segments(engine)

    _stage(config, "flush and index")
    clock = time.perf_counter()
    client.flush(COLLECTION)
    flush_s = time.perf_counter() - clock
    after_flush = _segments(engine)
    engine._wait_for_bg()  # Lite's worker: compaction, then the index of every segment lacking one
    ready_s = time.perf_counter() - clock
    after_bg = _segments(engine)

    _stage(config, "reload")
    clock = time.perf_counter()
    client.release_collection(COLLECTION)
    client.load_collection(COLLECTION)
    reload_s = time.perf_counter() - clock
    after_load = _status()

    _stage(config, "search")
    ordered = np.stack([originals[i] for i in sorted(originals)])  # the order of queries["near_ids"]
    near = _near_copies(ordered, dim)
    default = _search_params(index_type, index_params)
    for q in queries["fresh"][:10]:
        _search(client, q, default)
    fresh_runs = [_search(client, q, default) for q in queries["fresh"]]
    near_runs = [_search(client, q, default) for q in near]
    sweep = []
    knobs = {"HNSW": HNSW_EFS, "IVF_FLAT": IVF_NPROBES}.get(index_type, ())
    half = max(1, len(near) // 2)
    for knob in knobs:
        params = _search_params(index_type, index_params, knob)
        if params == default or (index_type == "IVF_FLAT" and knob > index_params["nlist"]):
            continue
        sweep.append(
            {
                "params": params,
                "fresh": [_search(client, q, params) for q in queries["fresh"][:half]],
                "near": [_search(client, q, params) for q in near[:half]],
            }
        )
    client.close()

    _stage(config, "ground truth")
    collection = np.concatenate(
        [_batch(mixture, dim, s, min(BATCH, size - s)) for s in range(0, size, BATCH)]
    )
    exact_fresh = np.argsort(-(queries["fresh"] @ collection.T), axis=1)[:, :K]
    exact_near = np.argsort(-(near @ collection.T), axis=1)[:, :K]
    near_truth = queries["near_ids"]

    def quality(
        fresh: list[tuple[float, list[int]]], nearby: list[tuple[float, list[int]]]
    ) -> dict[str, Any]:
        recall = [len(set(ids) & set(exact_fresh[i].tolist())) / K for i, (_, ids) in enumerate(fresh)]
        first = [float(bool(ids) and ids[0] == int(near_truth[i])) for i, (_, ids) in enumerate(nearby)]
        times = [t for t, _ in fresh]
        return {
            "p50_ms": round(statistics.median(times) * 1000, 2),
            "p95_ms": round(_percentile(times, 0.95) * 1000, 2),
            "near_p50_ms": round(statistics.median([t for t, _ in nearby]) * 1000, 2),
            "recall_at_10": round(statistics.mean(recall), 4),
            "near_recall_at_1": round(statistics.mean(first), 4),
        }

    dbdir = Path(uri)
    result: dict[str, Any] = {
        "index_params": index_params,
        "lite_build_params": lite_params,
        "search_params": default,
        "insert_per_s": round(size / insert_s),
        "insert_s": round(insert_s, 2),
        "flush_s": round(flush_s, 2),
        "ready_s": round(ready_s, 2),
        "reload_s": round(reload_s, 3),
        "segments": {"after_insert": after_insert, "after_flush": after_flush, "after_bg": after_bg},
        "rss_baseline_mib": baseline["VmRSS"],
        "rss_after_load_mib": after_load["VmRSS"],
        "rss_anon_after_load_mib": after_load["RssAnon"],
        "peak_rss_mib": after_load["VmHWM"],
        "disk_mib": round(_du(dbdir) / 2**20, 1),
        "index_files_mib": round(_du(dbdir, ".idx") / 2**20, 1),
        **quality(fresh_runs, near_runs),
        "exact_near_recall_at_1": round(float(np.mean(exact_near[:, 0] == near_truth)), 4),
        "near_cosine_mean": round(float(np.mean(np.sum(near * ordered, 1))), 4),
        "sweep": [{"params": s["params"], **quality(s["fresh"], s["near"])} for s in sweep],
    }
    return result


def reopen(config: dict[str, Any]) -> dict[str, Any]:
    """A fresh process opening the filled file and loading it, as a restarted daemon does."""
    from pymilvus import MilvusClient

    baseline = _status()
    _stage(config, "fresh open")
    clock = time.perf_counter()
    client = MilvusClient(uri=config["uri"])
    client.load_collection(COLLECTION)
    open_s = time.perf_counter() - clock
    loaded = _status()
    query = _draw(_centres(config["dim"]), 1, np.random.default_rng((SEED, config["dim"], 4)))[0]
    params = _search_params(config["index_type"], _index_params(config["index_type"], config["vectors"]))
    first_s, ids = _search(client, query, params)
    client.close()
    return {
        "fresh_open_s": round(open_s, 2),
        "fresh_first_search_ms": round(first_s * 1000, 1),
        "fresh_rss_baseline_mib": baseline["VmRSS"],
        "fresh_rss_after_load_mib": loaded["VmRSS"],
        "fresh_rss_anon_after_load_mib": loaded["RssAnon"],
        "fresh_hits": len(ids),
    }


# ── the parent: one subprocess per step, watched ──────────────────────────────────────────────


def _rss_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _watched(step: str, config: dict[str, Any], limit_mib: int, timeout_s: float) -> dict[str, Any]:
    """Run ``step`` of ``config`` in a subprocess; stop it past ``limit_mib`` of RSS or ``timeout_s``."""
    result_file = Path(config["stage_file"]).with_suffix(f".{step}.json")
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", step, json.dumps(config), str(result_file)]
    )
    started, peak, stopped = time.monotonic(), 0, None
    while process.poll() is None:
        rss = _rss_mib(process.pid)
        peak = max(peak, rss)
        if rss > limit_mib:
            stopped = f"RSS {rss:,} MiB over the {limit_mib:,} MiB limit"
        elif time.monotonic() - started > timeout_s:
            stopped = f"still running after {timeout_s:.0f} s"
        if stopped:
            process.kill()
            process.wait()
            stage = Path(config["stage_file"]).read_text() if Path(config["stage_file"]).exists() else "?"
            return {"stopped": f"{step}: {stopped}, during {stage}", "watched_peak_rss_mib": peak}
        time.sleep(0.2)
    if process.returncode != 0 or not result_file.exists():
        return {"stopped": f"{step}: exited with {process.returncode}", "watched_peak_rss_mib": peak}
    out: dict[str, Any] = json.loads(result_file.read_text())
    return out


def run_config(dim: int, size: int, index_type: str, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"dimension": dim, "vectors": size, "index_type": index_type}
    with tempfile.TemporaryDirectory(prefix="imgwatch-index-types-") as scratch:
        config = {
            "dim": dim,
            "vectors": size,
            "index_type": index_type,
            "queries": args.queries,
            "flattened_params": args.flattened_params,
            "uri": str(Path(scratch) / "vectors.db"),
            "stage_file": str(Path(scratch) / "stage"),
        }
        limit = int(args.rss_limit_gib * 1024)
        clock = time.monotonic()
        row |= _watched("build", config, limit, args.timeout)
        if "stopped" not in row:
            row |= _watched("reopen", config, limit, args.timeout)
        row["wall_s"] = round(time.monotonic() - clock, 1)
    print(json.dumps({k: v for k, v in row.items() if k not in ("segments", "sweep")}), file=sys.stderr)
    return row


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("pymilvus", "milvus-lite", "faiss-cpu", "numpy")}


def _segment_text(row: dict[str, Any]) -> str:
    segs = row.get("segments", {}).get("after_bg", [])
    text = f"{len(segs)}"
    nlists = sorted({s["nlist"] for s in segs if "nlist" in s})
    if nlists:
        text += f" (nlist {'/'.join(map(str, nlists))})"
    return text


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        "# Milvus Lite index types: FLAT, HNSW, IVF_FLAT",
        "",
        f"{report['date']}; {report['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f"; run took {report['seconds'] / 60:.1f} minutes.",
        "",
        "Synthetic fc7-like vectors (non-negative, ~68 % zeros, 200 uneven clusters, L2-normalised), "
        "metric IP,",
        f"k={K}, {report['queries']} single-query searches per configuration after a warm-up, through "
        "`MilvusClient` as imgwatch calls it.",
        "HNSW: M=16, efConstruction=200, ef=64. IVF_FLAT: nlist = 4 * sqrt(N), "
        "nprobe = max(16, nlist // 32).",
        "",
        "- **insert**: upserts of 500 (Lite flushes itself at 128 MiB of MemTable and indexes that segment "
        "in the background meanwhile); **ready**: `flush` plus the wait for Lite's background index "
        "build, after the last upsert; **fresh open**: a new process opening the file and loading it;",
        "- **recall@10**: new vectors from the same distribution, against numpy's exact top 10; **near "
        "recall@1**: stored vectors plus noise (cosine ~0.95), renormalised: the original ranked first;",
        "- **RSS**: the building process after `load_collection` (fresh open: the new process after its "
        "load); both include ~"
        f"{rows[0].get('rss_baseline_mib', '?') if rows else '?'} MiB of interpreter and pymilvus.",
        "",
        "| dim | vectors | index | insert vec/s | ready | fresh open | p50 | p95 | recall@10 | near recall@1 "
        "| RSS after load | RSS fresh open | disk (index files) | segments |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        head = f"| {r['dimension']} | {r['vectors']:,} | {r['index_type']} |"
        if "stopped" in r and "p50_ms" not in r:
            lines.append(
                f"{head} stopped: {r['stopped']} (peak {r.get('watched_peak_rss_mib', '?'):,} MiB) |"
            )
            continue
        lines.append(
            f"{head} {r['insert_per_s']:,} | {r['ready_s']:.1f} s | "
            f"{r['fresh_open_s']:.1f} s | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
            f"{r['recall_at_10']:.3f} | {r['near_recall_at_1']:.3f} | {r['rss_after_load_mib']:,} MiB | "
            f"{r['fresh_rss_after_load_mib']:,} MiB | "
            f"{r['disk_mib']:,.0f} MiB ({r['index_files_mib']:,.0f}) | "
            f"{_segment_text(r)} |"
        )
    lines += [
        "",
        "## Where Lite builds the index",
        "",
        "Segments (indexed / all) after the last upsert, when `flush` returns, and after Lite's background "
        "worker (compaction, then the missing indexes); reload: release + load in the same process "
        "(reads the index files); fresh open: a new process's `MilvusClient` + `load_collection`.",
        "",
        "| dim | vectors | index | after upserts | after flush | after worker | flush | flush + worker "
        "| reload | fresh open | Lite's build params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "segments" not in r:
            continue
        seg = r["segments"]
        counts = [
            f"{sum(s['indexed'] for s in seg[k])} / {len(seg[k])}"
            for k in ("after_insert", "after_flush", "after_bg")
        ]
        lines.append(
            f"| {r['dimension']} | {r['vectors']:,} | {r['index_type']} | {' | '.join(counts)} | "
            f"{r['flush_s']:.1f} s | {r['ready_s']:.1f} s | {r['reload_s']:.2f} s | "
            f"{r['fresh_open_s']:.1f} s | "
            f"`{json.dumps(r['lite_build_params'])}` |"
        )
    lines += [
        "",
        "## ef and nprobe",
        "",
        f"The same loaded collections, {max(1, report['queries'] // 2)} queries of each kind per setting "
        "(the default's row is above).",
        "",
        "| dim | vectors | index | search params | p50 | recall@10 | near recall@1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        for s in r.get("sweep", []):
            params = ", ".join(f"{k}={v}" for k, v in s["params"].items())
            lines.append(
                f"| {r['dimension']} | {r['vectors']:,} | {r['index_type']} | {params} | "
                f"{s['p50_ms']:.1f} ms | {s['recall_at_10']:.3f} | {s['near_recall_at_1']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 vectors per dimension: a smoke run")
    parser.add_argument("--sizes-512", default="10000,30000,100000")
    parser.add_argument("--sizes-4096", default="10000,30000")
    parser.add_argument("--types", default=",".join(INDEX_TYPES))
    parser.add_argument("--queries", type=int, default=100, help="queries of each kind per configuration")
    parser.add_argument("--rss-limit-gib", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration step")
    parser.add_argument(
        "--flattened-params",
        action="store_true",
        help="send the index params as imgwatch does today (Milvus Lite drops them: see _create)",
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        step, config, result_file = args.worker
        result = (build if step == "build" else reopen)(json.loads(config))
        Path(result_file).write_text(json.dumps(result))
        return

    sizes = (
        {512: [2000], 4096: [2000]}
        if args.quick
        else {
            512: [int(s) for s in args.sizes_512.split(",") if s],
            4096: [int(s) for s in args.sizes_4096.split(",") if s],
        }
    )
    queries = 20 if args.quick else args.queries
    args.queries = queries
    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(parents=True, exist_ok=True)
    name = "index_types" + ("_flattened" if args.flattened_params else "") + ("_quick" if args.quick else "")
    report: dict[str, Any] = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{_cpu()}, {os.cpu_count()} CPUs",
        "versions": _versions(),
        "queries": queries,
        "rss_limit_gib": args.rss_limit_gib,
        "flattened_params": args.flattened_params,
        "rows": [],
    }
    started = time.monotonic()
    for dim, dim_sizes in sizes.items():
        for size in dim_sizes:
            for index_type in args.types.split(","):
                report["rows"].append(run_config(dim, size, index_type, args))
                report["seconds"] = round(time.monotonic() - started, 1)
                # Written after each configuration: a run cut short keeps what it measured.
                (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
