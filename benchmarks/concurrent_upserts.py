"""Single-vector upserts from many threads at once (what the daemon's and ``index``'s handlers do):
through ``MilvusVectorStore.upsert``, whose concurrent calls share store calls (group commit), side
by side with one store call per vector (the store's own write path, as before the group commit), and
one thread alone. On a real Milvus server (started from ``.milvus-venv``, as the tests do) and on
Milvus Lite, 4096-d vectors, two interleaved rounds.

    python benchmarks/concurrent_upserts.py                 # 1,500 vectors, 36 threads (index's workers)
    python benchmarks/concurrent_upserts.py --vectors 3000 --threads 16

Writes ``results/concurrent_upserts.json`` and ``.md`` (``IMGWATCH_BENCH_RESULTS`` moves them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from imgwatch.services.vectors import MilvusVectorStore  # noqa: E402
from tests import milvus_server as launcher  # noqa: E402
from tests.conftest import start_milvus_server, stop_milvus_server  # noqa: E402

DIM = 4096
MODES = ("one call each", "grouped")


def _one_call_each(store: MilvusVectorStore, key: int, vector: np.ndarray) -> None:
    row: dict[str, Any] = {"id": key, "path": f"/p/{key}.jpg", "vector": vector.tolist()}
    if store._has_node_field:
        row["node"] = ""
    store._upsert_rows([row])  # the store's write itself, one call per vector


def measure(store: MilvusVectorStore, mode: str, vectors: np.ndarray, threads: int) -> dict[str, Any]:
    write: Callable[[int], None]
    if mode == "grouped":
        write = lambda i: store.upsert([(i, f"/p/{i}.jpg", vectors[i])])  # noqa: E731
    else:
        write = lambda i: _one_call_each(store, i, vectors[i])  # noqa: E731
    started = time.perf_counter()
    if mode == "one thread":
        for i in range(len(vectors)):
            write(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, range(len(vectors))))
    elapsed = time.perf_counter() - started
    assert store.count() == len(vectors)
    return {
        "vectors_per_s": round(len(vectors) / elapsed),
        "store_calls": store.upsert_stats.calls if mode == "grouped" else len(vectors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=36)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--milvus-python", type=Path, default=REPO / ".milvus-venv" / "bin" / "python")
    args = parser.parse_args()
    vectors = np.random.default_rng(0).random((args.vectors, DIM), dtype=np.float32)
    scratch = Path(tempfile.mkdtemp(prefix="imgwatch-upserts-"))
    rows: list[dict[str, Any]] = []
    server = None
    try:
        (scratch / "milvus").mkdir()
        server = start_milvus_server(args.milvus_python, scratch / "milvus")
        for engine in ("server", "lite"):
            plan = [*MODES * args.rounds, "one thread"]
            for n, mode in enumerate(plan):
                if engine == "server":
                    uri, token = f"unix:{scratch / 'milvus' / launcher.SOCKET_NAME}", launcher.TOKEN
                else:
                    uri, token = str(scratch / f"lite-{n}.db"), None
                store = MilvusVectorStore(uri, dimension=DIM, collection=f"upserts_{n}", token=token)
                try:
                    row = {"engine": engine, "mode": mode} | measure(store, mode, vectors, args.threads)
                finally:
                    if engine == "server":
                        store._client.drop_collection(f"upserts_{n}")
                    store.close()
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        if server is not None:
            stop_milvus_server(server)
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
        "vectors": args.vectors,
        "threads": args.threads,
        "rows": rows,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    results = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "concurrent_upserts.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    (results / "concurrent_upserts.md").write_text(markdown)
    print(markdown)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "### Single-vector upserts from many threads (4096-d)",
        "",
        f"- {report['machine']}; {report['vectors']} vectors from {report['threads']} threads (and from "
        "one thread, last); rounds interleaved",
        "",
        "| store | writes | vectors/s | store calls |",
        "| --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['engine']} | {row['mode']} | {row['vectors_per_s']} | {row['store_calls']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
