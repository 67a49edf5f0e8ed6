"""PCA-512 vectors at scale: a real Milvus server up to 1,000,000 of them, and Milvus Lite as far as it goes.

For each size, a data dir is filled with synthetic PCA-512 vectors and as many catalog rows (as
``search_latency.py`` fills one, but in bounded chunks), in the ANN index ``index_type = auto`` gives
that size (FLAT up to ``exact_search_up_to``, then IVF_FLAT with ``auto_index_params``), then:

- **insert rate**: vectors/s of the fill, upserted ``imgwatch.batches.BATCH`` (256) at a time, as a
  burst of copies writes them (the time of the upserts alone; generating the vectors overlaps them in
  a thread); and, on a side collection, the rate of single-vector upserts (what the indexing handler
  writes per new file) and of ``imgwatch.reindex.BATCH`` (32) ones;
- **index build**: from the last upsert until the index covers every row (server: flush, then
  ``describe_index`` until ``indexed_rows`` reaches the count and the state is Finished, with the rows
  compaction's merged segments still queue for indexing again; Lite: flush, then the first search);
- **store search** p50/p95 in process (the vector store's ``search`` of stored vectors, k=18 as a
  k=10 search asks), then **daemon search** p50/p95 through a warm ``imgwatch watch`` (a real 2 MP
  JPEG through VGG16 ``random:0``, PCA and the store), the daemon's peak RSS (VmHWM) and, on the
  server, the server's RSS (the milvus processes' VmRSS summed, and their VmHWM).

The server is Milvus 2.3.5 standalone from ``.milvus-venv`` in private network and PID namespaces
(``tests/milvus_server.py``), a fresh one per size, reached at ``unix:DATA/milvus.sock``.

    python benchmarks/million.py                      # server 100k and 1M, Lite 100k and 300k
    python benchmarks/million.py --quick              # 20,000 on each: a smoke run

Writes ``results/million.json`` and ``.md`` (``million_quick.*`` with ``--quick``; under
``$IMGWATCH_BENCH_RESULTS`` if set) after every size, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from search_latency import WEIGHTS, _cpu, _peak_rss_mib, _percentile, _synthetic, synthetic_rows

from imgwatch.batches import BATCH as COPY_BATCH
from imgwatch.config import Settings
from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.reindex import BATCH as REINDEX_BATCH
from imgwatch.reindex_steps import REBUILD_FACTOR
from imgwatch.samples import photo
from imgwatch.services.build import (
    COLLECTION_META_KEY,
    GENERATION_META_KEY,
    INDEX_META_KEY,
    SIGNATURE_META_KEY,
    open_services,
)
from imgwatch.services.catalog import FILES
from imgwatch.services.pca import PCATransform, ProjectedExtractor
from imgwatch.services.vectors import (
    MilvusVectorStore,
    auto_index_params,
    auto_index_type,
    server_segment_rows,
)
from tests import milvus_server as launcher
from tests.conftest import start_milvus_server, stop_milvus_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PCA = 512
CHUNK = 50_000  # catalog rows per transaction, and the most vectors alive in this process at once
LITE_BASE_MIB = 1610  # imgwatch.capacity's measured daemon base; its per-vector figure is below
LITE_KIB_PER_VECTOR = 8.9


class StopBenchmarkError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)


def auto_index(settings: Settings, size: int) -> dict[str, Any]:
    """The index ``index_type = auto`` settles on for a collection of ``size`` vectors (on a server,
    its lists sized for the server's segments)."""
    kind = auto_index_type(size, "FLAT", settings.exact_search_up_to, REBUILD_FACTOR)
    rows = None if settings.uses_milvus_lite else server_segment_rows(PCA)
    return {"type": kind, "params": auto_index_params(kind, size, segment_rows=rows)}


def _chunks(rng: np.random.Generator, transform: PCATransform, size: int) -> Iterator[np.ndarray]:
    """``size`` projected synthetic vectors, 2,000 at a time, made in a thread ahead of the upserts."""
    ready: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=4)

    def make() -> None:
        for start in range(0, size, 2000):
            ready.put(transform.apply(_synthetic(rng, min(2000, size - start))).astype(np.float32))
        ready.put(None)

    thread = threading.Thread(target=make, daemon=True)
    thread.start()
    while (chunk := ready.get()) is not None:
        yield chunk
    thread.join()


def fill(settings: Settings, size: int, index: dict[str, Any], transform: PCATransform) -> dict[str, Any]:
    """Fill ``settings``' data dir with ``size`` catalog rows and PCA-512 vectors in ``index``; the
    insert rate (upserts of :data:`COPY_BATCH`) and the index build time."""
    data_dir = settings.data_dir
    rng = np.random.default_rng(size)
    clock = time.monotonic()
    with open_services(settings, command="benchmark", lazy_store=True) as services:
        transform.save(data_dir / "pca")
        signature = ProjectedExtractor(services.ctx.extractor, transform).signature
        catalog = services.catalog
        catalog.set_meta(COLLECTION_META_KEY, f"{settings.collection}_1")
        catalog.set_meta(GENERATION_META_KEY, "1")
        for start in range(0, size, CHUNK):
            with catalog.engine.begin() as conn:
                conn.execute(
                    sa.insert(FILES), synthetic_rows(range(start, min(size, start + CHUNK)), signature.key)
                )
        catalog.set_meta(SIGNATURE_META_KEY, signature.to_json())
        catalog.set_meta(INDEX_META_KEY, json.dumps(index))
    catalog_s = time.monotonic() - clock

    upsert_s = 0.0
    with open_services(settings.replace(pca=PCA), command="benchmark", model=False) as services:
        vectors: MilvusVectorStore = services.ctx.vectors  # type: ignore[assignment]
        ids = sorted(services.catalog.all_ids())
        assert len(ids) == size, (len(ids), size)
        done = 0
        for chunk in _chunks(rng, transform, size):
            keys = ids[done : done + len(chunk)]
            for at in range(0, len(chunk), COPY_BATCH):
                batch = [
                    (key, f"/synthetic/{key:07d}.jpg", vector)
                    for key, vector in zip(
                        keys[at : at + COPY_BATCH], chunk[at : at + COPY_BATCH], strict=True
                    )
                ]
                started = time.perf_counter()
                vectors.upsert(batch)
                upsert_s += time.perf_counter() - started
            done += len(chunk)
        clock = time.monotonic()
        pending = wait_for_index(vectors, size, lite=not settings.milvus_uri)
        index_s = time.monotonic() - clock
        count = vectors.count()
        assert count == size, (count, size)
    return {
        "catalog_rows_s": round(catalog_s, 1),
        "insert_batch": COPY_BATCH,
        "insert_s": round(upsert_s, 1),
        "insert_vectors_per_s": round(size / upsert_s),
        "index_build_s": round(index_s, 1),
        "index_pending_rows": pending,
    }


def wait_for_index(vectors: MilvusVectorStore, size: int, *, lite: bool) -> int:
    """Flush, then wait until the collection's index covers every row (Lite: it answers a search).
    Returns the rows a server still has to index again (segments that compaction merged meanwhile:
    their old segments, indexed, serve until the new ones are)."""
    client, name = vectors._client, vectors.collection
    client.flush(name)
    if lite:
        vectors.search([np.ones(PCA, dtype=np.float32) / PCA**0.5], 18)
        return 0
    last, moved = -1, time.monotonic()
    while True:
        info = client.describe_index(name, "vector")
        indexed, total = int(info.get("indexed_rows", 0)), int(info.get("total_rows", 0))
        # Milvus 2.3.5 at 1,000,000: indexed_rows reached total_rows with the state Finished while
        # pending_index_rows stayed at 905,280 for 15 min (compaction's merged segments, queued for
        # its one index builder): every row is searched through an index from then on.
        if total >= size and indexed >= total and info.get("state") == "Finished":
            return int(info.get("pending_index_rows", 0))
        if indexed != last:
            last, moved = indexed, time.monotonic()
        elif time.monotonic() - moved > 900:  # waits on progress, not on a fixed time
            raise StopBenchmarkError(f"the index build made no progress for 15 min: {info}")
        time.sleep(1)


def write_rates(uri: str, token: str | None, probe_dir: Path, seconds: float) -> dict[str, Any]:
    """Vectors/s of single-vector and of :data:`REINDEX_BATCH` upserts, on a side collection (their
    cost per call hardly depends on the collection's size), for ``seconds`` of upserts each."""
    rng = np.random.default_rng(7)
    probe_dir.mkdir(exist_ok=True)
    target = uri if uri.startswith("unix:") else str(probe_dir / "probe.db")
    store = MilvusVectorStore(target, dimension=PCA, collection="million_probe", token=token)
    rates: dict[str, Any] = {}
    try:
        key = 0
        for batch in (1, REINDEX_BATCH):
            calls, spent = 0, 0.0
            while spent < seconds:
                rows = rng.random((batch, PCA), dtype=np.float32)
                items = [(key + i, f"/probe/{key + i}.jpg", v) for i, v in enumerate(rows)]
                key += batch
                started = time.perf_counter()
                store.upsert(items)
                spent += time.perf_counter() - started
                calls += 1
            rates[f"batch_{batch}_vectors_per_s"] = round(calls * batch / spent)
    finally:
        if target == uri:
            store._client.drop_collection("million_probe")
        store.close()
        shutil.rmtree(probe_dir, ignore_errors=True)
    return rates


def store_search(settings: Settings, count: int) -> dict[str, Any]:
    """``count`` in-process searches of stored vectors (a different one each), k=18."""
    with open_services(settings.replace(pca=PCA), command="benchmark", model=False) as services:
        vectors: MilvusVectorStore = services.ctx.vectors  # type: ignore[assignment]
        ids = sorted(services.catalog.all_ids())
        picks = [ids[i * (len(ids) - 1) // max(1, count)] for i in range(count + 1)]
        stored = vectors.get_vectors(picks)
        queries = [stored[key] for key in picks]
        vectors.search([queries[-1]], 18)
        times: list[float] = []
        levels: dict[str, list[float]] = {"Strong": [], "Bounded": []}
        for query in queries[:count]:
            clock = time.perf_counter()
            [hits] = vectors.search([query], 18)
            times.append(time.perf_counter() - clock)
            assert len(hits) == 18
            # The same search at Strong (what every read waited for before) and at Bounded beside it.
            for level, spent in levels.items():
                clock = time.perf_counter()
                vectors._client.search(
                    vectors.collection,
                    data=[np.asarray(query, dtype=np.float32).tolist()],
                    limit=18,
                    output_fields=["path"],
                    search_params={"metric_type": "IP", "params": vectors._search_params(18)},
                    consistency_level=level,
                )
                spent.append(time.perf_counter() - clock)
    return {
        "store_p50_ms": round(statistics.median(times) * 1000, 1),
        "store_p95_ms": round(_percentile(times, 0.95) * 1000, 1),
        "store_strong_p50_ms": round(statistics.median(levels["Strong"]) * 1000, 1),
        "store_bounded_p50_ms": round(statistics.median(levels["Bounded"]) * 1000, 1),
    }


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGWATCH_")}
    env.update(
        IMGWATCH_WEIGHTS=WEIGHTS,
        IMGWATCH_DATA_DIR=str(settings.data_dir),
        IMGWATCH_PCA=str(PCA),
        XDG_CONFIG_HOME=str(settings.data_dir / "cfg"),
        PYTHONPATH=str(REPO),
    )
    if settings.milvus_uri:
        env.update(IMGWATCH_MILVUS_URI=settings.milvus_uri, IMGWATCH_MILVUS_TOKEN=settings.milvus_token or "")
    return env


def daemon_search(settings: Settings, query: bytes, count: int, server: int | None) -> dict[str, Any]:
    """``count`` searches of ``query`` through a warm ``imgwatch watch``; its VmHWM, and the server's."""
    root = settings.data_dir.parent / "photos"
    root.mkdir(exist_ok=True)
    log = settings.data_dir.parent / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgwatch", "watch", str(root), "--log-level", "warning"],
            env=_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = DaemonClient(settings.data_dir, timeout=600)
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise StopBenchmarkError(f"daemon exited with {process.returncode}:\n{log.read_text()}")
            try:
                client.status()
                break
            except DaemonUnavailableError:
                time.sleep(0.2)
        ready_s = time.monotonic() - started
        client.search([("warm-up", query)], 10)
        times = []
        cpu_before, wall_before = server_cpu_s(server) if server else 0.0, time.monotonic()
        for _ in range(count):
            clock = time.perf_counter()
            [result] = client.search([("query", query)], 10)
            times.append(time.perf_counter() - clock)
            assert len(result["results"]) == 10, result
        row: dict[str, Any] = {
            "daemon_ready_s": round(ready_s, 1),
            "daemon_p50_ms": round(statistics.median(times) * 1000),
            "daemon_p95_ms": round(_percentile(times, 0.95) * 1000),
            "daemon_rss_mib": _peak_rss_mib(process.pid),
        }
        if server is not None:
            # The server's share of the 2 cores while the daemon searched: what VGG16 did not get.
            row["server_cpu_share"] = round(
                (server_cpu_s(server) - cpu_before) / (time.monotonic() - wall_before), 2
            )
            row |= server_memory(server)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    return row


def _milvus_pids(launcher_pid: int) -> list[int]:
    """The milvus processes under ``launcher_pid`` (``unshare``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo, found = [launcher_pid], []
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("milvus"):
                found.append(pid)
        except OSError:
            continue
    return found


def server_cpu_s(launcher_pid: int) -> float:
    """CPU seconds (user + system) the milvus processes have used so far."""
    ticks = 0
    for pid in _milvus_pids(launcher_pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def server_memory(launcher_pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (MiB) of the milvus processes, summed."""
    rss = hwm = 0
    for pid in _milvus_pids(launcher_pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
    return {"server_rss_mib": rss // 1024, "server_hwm_mib": hwm // 1024}


def lite_fits(size: int) -> tuple[bool, str]:
    """Whether ``size`` 512-d vectors in Milvus Lite fit in 60 % of MemAvailable (imgwatch.capacity's
    measured figures: the daemon's base plus 8.9 KiB per vector)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available_mib = int(line.split()[1]) / 1024
            break
    need = LITE_BASE_MIB + LITE_KIB_PER_VECTOR * size / 1024
    return (
        need <= 0.6 * available_mib,
        f"needs ~{need:,.0f} MiB of {0.6 * available_mib:,.0f} (60 % of available)",
    )


def run_size(
    engine: str, size: int, args: argparse.Namespace, query: bytes, transform: PCATransform
) -> dict[str, Any]:
    base = args.scratch / f"million-{engine}-{size}"
    shutil.rmtree(base, ignore_errors=True)
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    server = None
    try:
        settings = Settings(data_dir=data_dir, weights=WEIGHTS, collection="million")
        if engine == "server":
            (base / "milvus").mkdir()
            server = start_milvus_server(args.milvus_python, base / "milvus")
            settings = settings.replace(
                milvus_uri=f"unix:{base / 'milvus' / launcher.SOCKET_NAME}", milvus_token=launcher.TOKEN
            )
        index = auto_index(settings, size)
        row: dict[str, Any] = {"engine": engine, "vectors": size, "index": index}
        row |= fill(settings, size, index, transform)
        print(json.dumps(row), file=sys.stderr, flush=True)
        row |= write_rates(settings.milvus_uri or "", settings.milvus_token, base / "probe", args.write_s)
        row |= store_search(settings, args.queries)
        row |= daemon_search(settings, query, args.queries, server.pid if server else None)
        return row
    finally:
        if server is not None:
            stop_milvus_server(server)
        shutil.rmtree(base, ignore_errors=True)


def _pending(row: dict[str, Any]) -> str:
    pending = row.get("index_pending_rows", 0)
    return f" ({pending:,} rows being indexed again after compaction)" if pending else ""


def report(rows: list[dict[str, Any]], notes: list[str], out: Path, name: str) -> str:
    machine = f"{_cpu()}, {os.cpu_count()} CPUs"
    (out / f"{name}.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
                "weights": WEIGHTS,
                "dimension": PCA,
                "rows": rows,
                "notes": notes,
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        "# PCA-512 at scale: Milvus server and Milvus Lite",
        "",
        f"{machine}; {datetime.now(UTC):%Y-%m-%d}; weights `{WEIGHTS}`; PCA-512 synthetic vectors and as "
        "many catalog rows; the index `index_type = auto` gives each size. Server: Milvus 2.3.5 standalone, "
        "a fresh one per size, over a Unix socket. Daemon search: one 2 MP JPEG through a warm "
        "`imgwatch watch` "
        "(VGG16, PCA, store, catalog), k=10. Store search: the vector store's own search in process, k=18 "
        "(imgwatch's consistency: Session after the store's first read, Strong before; rows measured "
        "before 2026-12-03 read at Strong always), the same search at Strong and at Bounded beside it. "
        "Server CPU: cores the milvus processes used while the daemon searched. Each row gives the day "
        "it was measured.",
        "",
        f"Insert: upserts of {COPY_BATCH} vectors (a burst of copies); single-vector upserts (the indexing "
        f"handler, one per new file) and upserts of {REINDEX_BATCH} (reindex) on a side collection.",
        "",
    ]
    for engine in ("server", "lite"):
        mine = [r for r in rows if r["engine"] == engine]
        if not mine:
            continue
        lines += [
            f"## {'Milvus 2.3.5 server' if engine == 'server' else 'Milvus Lite'}",
            "",
            "| vectors | index | insert vectors/s (x256) | x1 | x32 | index build "
            "| store p50 / p95 (Strong p50, Bounded p50) | daemon p50 / p95 | daemon RSS "
            "| server RSS (peak); CPU | daemon ready | measured |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in mine:
            index = r["index"]["type"] + "".join(f" {k} {v}" for k, v in r["index"]["params"].items())
            server = (
                f"{r['server_rss_mib']:,} MiB ({r['server_hwm_mib']:,}); "
                f"{r.get('server_cpu_share', '?')} cores"
                if "server_rss_mib" in r
                else "-"
            )
            lines.append(
                f"| {r['vectors']:,} | {index} | {r['insert_vectors_per_s']:,} | "
                f"{r['batch_1_vectors_per_s']:,} | {r[f'batch_{REINDEX_BATCH}_vectors_per_s']:,} | "
                f"{r['index_build_s']} s{_pending(r)} | {r['store_p50_ms']} / {r['store_p95_ms']} ms "
                f"({r.get('store_strong_p50_ms', '-')}, {r['store_bounded_p50_ms']}) | "
                f"{r['daemon_p50_ms']} / {r['daemon_p95_ms']} ms | {r['daemon_rss_mib']:,} MiB | {server} | "
                f"{r['daemon_ready_s']} s | {r.get('measured', '2026-12-02')}, "
                f"{r.get('machine', 'Intel(R) Xeon(R) Processor, 2 CPUs')} |"
            )
        lines.append("")
    lines += [f"- {note}" for note in notes]
    markdown = "\n".join(lines).rstrip() + "\n"
    (out / f"{name}.md").write_text(markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="vectors on the Milvus server")
    parser.add_argument("--lite-sizes", default="100000,300000", help="vectors in Milvus Lite")
    parser.add_argument("--queries", type=int, default=40, help="searches per size (store and daemon)")
    parser.add_argument("--write-s", type=float, default=10.0, help="seconds of x1 and x32 upserts timed")
    parser.add_argument("--quick", action="store_true", help="20,000 vectors on each engine, 10 queries")
    parser.add_argument("--scratch", type=Path, default=Path("/work/scratch"), help="data dirs go here")
    parser.add_argument("--milvus-python", type=Path, default=REPO / ".milvus-venv" / "bin" / "python")
    args = parser.parse_args()
    server_sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    lite_sizes = [20_000] if args.quick else [int(s) for s in args.lite_sizes.split(",") if s]
    if args.quick:
        args.queries, args.write_s = 10, 3.0
    # One PCA for every size (fitting it takes ~17 s on 2 cores), as one extractor would have.
    transform = PCATransform.fit([_synthetic(np.random.default_rng(512), 4 * PCA)], PCA)
    # Small sizes first on both engines, then the largest: a run cut short keeps the most rows.
    plan = sorted(
        [("server", n) for n in server_sizes] + [("lite", n) for n in lite_sizes], key=lambda p: p[1]
    )
    buffer = io.BytesIO()
    photo(4242, (1600, 1200)).save(buffer, "JPEG", quality=90)
    query = buffer.getvalue()
    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(exist_ok=True)
    name = "million_quick" if args.quick else "million"
    # Rows of sizes this run does not measure are kept from the last full run's results, with their
    # date: a run of one size does not drop the others from the table.
    rows: list[dict[str, Any]] = []
    if not args.quick and (out / f"{name}.json").exists():
        measuring = set(plan)
        rows = [
            r
            for r in json.loads((out / f"{name}.json").read_text())["rows"]
            if (r["engine"], r["vectors"]) not in measuring
        ]
    notes: list[str] = []
    for engine, size in plan:
        if engine == "lite":
            fits, why = lite_fits(size)
            if not fits:
                notes.append(f"Milvus Lite at {size:,} skipped: {why}.")
                continue
        clock = time.monotonic()
        try:
            row = run_size(engine, size, args, query, transform)
        except StopBenchmarkError as e:
            notes.append(f"{engine} at {size:,} failed: {e}")
            report(rows, notes, out, name)
            continue
        row["wall_s"] = round(time.monotonic() - clock)
        row["measured"] = f"{datetime.now(UTC):%Y-%m-%d}"
        row["machine"] = f"{_cpu()}, {os.cpu_count()} CPUs"
        rows.append(row)
        rows.sort(key=lambda r: (r["engine"] != "server", r["vectors"]))
        print(json.dumps(row), file=sys.stderr, flush=True)
        report(rows, notes, out, name)
    print(report(rows, notes, out, name))


if __name__ == "__main__":
    main()
