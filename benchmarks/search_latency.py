"""Search latency through a warm daemon and a cold CLI, and the daemon's peak memory, by index size.

For each size (10k and 100k vectors by default) and each vector size (4096-d, and PCA-512), a data
dir is filled with synthetic vectors (Milvus Lite + catalog rows; no images needed for the store),
then:

- **warm**: ``imgwatch watch`` runs on it, and one query photo is searched through the daemon's
  local socket ``--queries`` times (the real path: decode, VGG16, PCA, Milvus, catalog);
- **cold**: ``imgwatch search QUERY`` runs as a fresh process (no daemon) ``--cold`` times:
  interpreter, model and store start-up included, as a user of the small CLI sees it; each run is
  paired with a ``python -c "import torch, torchvision"`` run, and ``cold_minus_torch`` is what the
  search costs beyond that floor (issue 16);
- **peak RSS** of the daemon (VmHWM) after its searches.

    python benchmarks/search_latency.py                 # 10k and 100k, 4096-d and PCA-512
    python benchmarks/search_latency.py --quick         # 2k vectors only: a smoke run

Writes ``results/search_latency.json`` and ``results/search_latency.md`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from imgwatch.config import Settings
from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.samples import photo
from imgwatch.services.build import (
    COLLECTION_META_KEY,
    GENERATION_META_KEY,
    SIGNATURE_META_KEY,
    open_services,
)
from imgwatch.services.catalog import FILES
from imgwatch.services.pca import PCATransform, ProjectedExtractor

HERE = Path(__file__).resolve().parent
WEIGHTS = "random:0"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def synthetic_rows(ids: range, signature_key: str) -> list[dict[str, Any]]:
    """Catalog rows for the synthetic files ``ids``, indexed with vectors of ``signature_key``."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return [
        {
            "path": f"/synthetic/{i:07d}.jpg".encode(),
            "size": 1,
            "mtime_ns": 1,
            "content_hash": f"{i:032x}",
            "state": "indexed",
            "has_vector": True,
            "signature": signature_key,
            "created_at": now,
            "updated_at": now,
            "indexed_at": now,
        }
        for i in ids
    ]


def _synthetic(rng: np.random.Generator, count: int) -> np.ndarray:
    """Non-negative, unit-length 4096-d vectors with shared structure, like fc7 activations."""
    basis = rng.random((64, 4096), dtype=np.float32)
    mix = rng.random((count, 64), dtype=np.float32) ** 4
    vectors = np.maximum(mix @ basis + rng.normal(0, 0.5, (count, 4096)).astype(np.float32), 0)
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def fill(data_dir: Path, size: int, pca: int | None) -> None:
    """A data dir whose index holds ``size`` synthetic vectors (made as the configured extractor's)."""
    settings = Settings(data_dir=data_dir, weights=WEIGHTS)
    rng = np.random.default_rng(size)
    with open_services(settings, command="benchmark") as services:
        ctx = services.ctx
        signature = ctx.extractor.signature
        transform = None
        if pca is not None:
            transform = PCATransform.fit([_synthetic(rng, 4 * pca)], pca)
            transform.save(data_dir / "pca")
            signature = ProjectedExtractor(ctx.extractor, transform).signature
            # The projected vectors need a collection of their size: point the catalog at a new one.
            services.catalog.set_meta(COLLECTION_META_KEY, f"{settings.collection}_1")
            services.catalog.set_meta(GENERATION_META_KEY, "1")
        with services.catalog.engine.begin() as conn:
            conn.execute(sa.insert(FILES), synthetic_rows(range(size), signature.key))
        services.catalog.set_meta(SIGNATURE_META_KEY, signature.to_json())
    # Reopen so the store is created with the signature's dimension; no model is needed to upsert.
    settings = settings.replace(pca=pca)
    with open_services(settings, command="benchmark", model=False) as services:
        ctx = services.ctx
        ids = sorted(services.catalog.all_ids())
        for start in range(0, size, 2000):
            chunk = ids[start : start + 2000]
            vectors = _synthetic(rng, len(chunk))
            if transform is not None:
                vectors = transform.apply(vectors)
            ctx.vectors.upsert(
                [(key, f"/synthetic/{key:07d}.jpg", v) for key, v in zip(chunk, vectors, strict=True)]
            )
        ctx.vectors.compact()
        assert ctx.vectors.count() == size


def _env(data_dir: Path, pca: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGWATCH_")}
    env.update(
        IMGWATCH_WEIGHTS=WEIGHTS, IMGWATCH_DATA_DIR=str(data_dir), XDG_CONFIG_HOME=str(data_dir / "cfg")
    )
    if pca is not None:
        env["IMGWATCH_PCA"] = str(pca)
    return env


def warm(data_dir: Path, root: Path, query: bytes, pca: int | None, count: int) -> dict[str, Any]:
    log = data_dir.parent / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgwatch", "watch", str(root), "--log-level", "warning"],
            env=_env(data_dir, pca),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = DaemonClient(data_dir, timeout=600)
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"daemon exited with {process.returncode}:\n{log.read_text()}")
            try:
                client.status()
                break
            except DaemonUnavailableError:
                time.sleep(0.2)
        ready_s = time.monotonic() - started
        client.search([("warm-up", query)], 10)
        latencies = []
        for _ in range(count):
            clock = time.perf_counter()
            [result] = client.search([("query", query)], 10)
            latencies.append(time.perf_counter() - clock)
            assert len(result["results"]) == 10
        peak = _peak_rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    return {
        "daemon_ready_s": round(ready_s, 1),
        "warm_p50_s": round(statistics.median(latencies), 4),
        "warm_p95_s": round(_percentile(latencies, 0.95), 4),
        "daemon_peak_rss_mib": peak,
    }


def torch_import_s() -> float:
    """Seconds for a fresh ``python -c "import torch, torchvision"``: the floor of any cold search."""
    clock = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torchvision"], check=True)
    return time.perf_counter() - clock


def cold(data_dir: Path, query_file: Path, pca: int | None, count: int) -> dict[str, Any]:
    """``count`` cold searches, each paired with a torch import run just before or after it (in turn),
    so a machine whose load drifts moves both alike; ``cold_minus_torch`` is the median difference
    (issue 16's measure: what a cold search costs beyond importing torch)."""
    times, imports = [], []
    for run in range(count):
        if run % 2:
            imports.append(torch_import_s())
        clock = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "imgwatch", "search", str(query_file), "-k", "10"],
            env=_env(data_dir, pca),
            check=False,
            capture_output=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"imgwatch search failed:\n{done.stderr.decode(errors='replace')}")
        times.append(time.perf_counter() - clock)
        if not run % 2:
            imports.append(torch_import_s())
    beyond = [search - floor for search, floor in zip(times, imports, strict=True)]
    return {
        "cold_p50_s": round(statistics.median(times), 2),
        "cold_max_s": round(max(times), 2),
        "torch_import_p50_s": round(statistics.median(imports), 2),
        "cold_minus_torch_p50_s": round(statistics.median(beyond), 2),
    }


def store_search(data_dir: Path, pca: int | None, count: int) -> dict[str, Any]:
    """The vector store's share of a warm search: ``count`` searches of one stored vector, in process.

    With :func:`query_embedding`, it says where a warm search's time goes."""
    settings = Settings(data_dir=data_dir, weights=WEIGHTS, pca=pca)
    with open_services(settings, command="benchmark", model=False) as services:
        vectors = services.ctx.vectors
        first = next(iter(services.catalog.iter_ids_with_vectors(batch_size=1)))
        [query] = vectors.get_vectors(first).values()
        vectors.search([query], 18)
        times = []
        for _ in range(count):
            clock = time.perf_counter()
            vectors.search([query], 18)  # k=10 plus the slack search.search_vectors asks for
            times.append(time.perf_counter() - clock)
    return {"store_search_p50_s": round(statistics.median(times), 4)}


def query_embedding(query: bytes, count: int) -> float:
    """Median seconds to decode the query photo and run it alone through the model (as a warm search
    does); the same for every index size, so measured once."""
    from imgwatch.services.extractor import VGG16Extractor, WeightsSpec

    extractor = VGG16Extractor(WeightsSpec.parse(WEIGHTS))
    try:
        extractor.embed(query)
        times = []
        for _ in range(count):
            clock = time.perf_counter()
            extractor.embed(query)
            times.append(time.perf_counter() - clock)
    finally:
        extractor.close()
    return round(statistics.median(times), 4)


def _peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _filled(store: Path, size: int, dim: int) -> Path:
    """The data dir of one configuration in ``store``, filled unless an earlier run finished it."""
    data_dir = store / f"{size}-{dim}" / "data"
    marker = data_dir.parent / "filled"
    if not marker.exists():
        shutil.rmtree(data_dir.parent, ignore_errors=True)
        data_dir.mkdir(parents=True)
        clock = time.monotonic()
        fill(data_dir, size, None if dim == 4096 else dim)
        marker.write_text(f"{time.monotonic() - clock:.1f}\n")
    return data_dir


def fill_all(store: Path, configs: list[tuple[int, int]]) -> None:
    """Fill every configuration's data dir, two at a time, largest first.

    Filling is not measured, and Milvus Lite takes one core to insert: side by side, the 100k x
    4096-d fill (minutes) hides the others."""
    ordered = sorted(configs, key=lambda c: c[0] * c[1], reverse=True)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_filled, store, size, dim) for size, dim in ordered]:
            done.result()


def measure(
    store: Path, configs: list[tuple[int, int]], queries: int, colds: int
) -> tuple[float, list[dict[str, Any]]]:
    """The query's embedding time, then per configuration: warm and cold searches, the daemon's peak
    memory and the store's own search time. One thing at a time: these are the timed parts."""
    buffer = io.BytesIO()
    photo(4242, (1600, 1200)).save(buffer, "JPEG", quality=90)
    query = buffer.getvalue()
    embedding_s = query_embedding(query, queries)
    rows = []
    for size, dim in configs:
        pca = None if dim == 4096 else dim
        data_dir = _filled(store, size, dim)
        with tempfile.TemporaryDirectory(prefix="imgwatch-search-") as scratch:
            root = Path(scratch) / "photos"
            root.mkdir()
            query_file = Path(scratch) / "query.jpg"
            query_file.write_bytes(query)
            row: dict[str, Any] = {"vectors": size, "dimension": dim}
            row |= warm(data_dir, root, query, pca, queries)
            row |= cold(data_dir, query_file, pca, colds)
            row |= store_search(data_dir, pca, queries)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return embedding_s, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dims", default="4096,512", help="4096 and/or PCA sizes")
    parser.add_argument("--queries", type=int, default=20, help="warm searches per configuration")
    parser.add_argument("--cold", type=int, default=1, help="cold CLI searches per configuration")
    parser.add_argument("--quick", action="store_true", help="2,000 vectors, 10 queries, 1 cold run")
    parser.add_argument(
        "--store", type=Path, help="keep the filled data dirs here (and reuse them); default: a temporary dir"
    )
    parser.add_argument("--fill-only", action="store_true", help="fill the data dirs, measure nothing")
    args = parser.parse_args()
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    queries, colds = (10, 1) if args.quick else (args.queries, args.cold)
    dims = [int(d) for d in args.dims.split(",")]
    configs = [(size, dim) for size in sizes for dim in dims]

    with contextlib.ExitStack() as stack:
        store = args.store or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="imgwatch-search-"))
        )
        store.mkdir(parents=True, exist_ok=True)
        fill_all(store, configs)
        if args.fill_only:
            return
        embedding_s, rows = measure(store, configs, queries, colds)

    report = {
        "machine": f"{_cpu()}, {os.cpu_count()} CPUs",
        "weights": WEIGHTS,
        "index": "FLAT",
        "query_embedding_p50_s": embedding_s,
        "rows": rows,
    }
    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(exist_ok=True)
    name = "search_latency_quick" if args.quick else "search_latency"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Search latency and daemon memory",
        "",
        f"{report['machine']}; weights `{WEIGHTS}`; Milvus Lite, FLAT index; one 2 MP JPEG query, k=10.",
        "Warm: through the running daemon's socket. Cold: a fresh `imgwatch search` process (no daemon).",
        "",
        "Where a warm search's time goes: decoding the query and one VGG16 pass "
        f"({embedding_s * 1000:.0f} ms p50 here, whatever the index size), then the vector store's search "
        "(its p50 below, measured in process); the rest is the daemon's socket and catalog.",
        "",
        "Cold minus torch: the median of each cold search's time less that of a `python -c \"import torch, "
        "torchvision\"` run beside it (issue 16's target: at most 2 s on a quiet 2-core machine).",
        "",
        "| vectors | dim | warm p50 | warm p95 | store search p50 | cold p50 | cold minus torch "
        "| daemon peak RSS | daemon ready after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['vectors']:,} | {r['dimension']} | {r['warm_p50_s'] * 1000:.0f} ms | "
            f"{r['warm_p95_s'] * 1000:.0f} ms | {r['store_search_p50_s'] * 1000:.0f} ms | "
            f"{r['cold_p50_s']:.1f} s | {r['cold_minus_torch_p50_s']:.1f} s | "
            f"{r['daemon_peak_rss_mib']:,} MiB | {r['daemon_ready_s']} s |"
        )
    markdown = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
