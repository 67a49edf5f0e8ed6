"""Drop -> searchable latency of a running ``imgwatch watch``, for single files on an idle daemon.

Starts a real daemon (Milvus Lite, SQLite, VGG16) on a temporary folder, drops photos into it one at
a time, and measures from just before the file is written until its catalog row says ``indexed``
(the row is marked only after the vector is in Milvus, so that is the moment it is searchable). The
catalog is read directly (SQLite WAL readers do not disturb the writer), not through a search,
which would compete with the daemon for the model.

    python benchmarks/drop_latency.py                       # 30 drops, seeded random weights
    python benchmarks/drop_latency.py --weights imagenet --drops 50 --size 1920x1080

Writes a Markdown and a JSON report next to this file (``results/``) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.samples import photo

HERE = Path(__file__).resolve().parent


def _jpeg(seed: int, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    photo(seed, size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _indexed(catalog: Path, path: str) -> bool:
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
        row = db.execute("SELECT state FROM files WHERE path = ?", (os.fsencode(path),)).fetchone()
    return row is not None and row[0] == "indexed"


def _wait_ready(client: DaemonClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"daemon exited with {process.returncode}")
        try:
            status = client.status()
        except DaemonUnavailableError:
            time.sleep(0.2)
            continue
        if not any(status["queue"].values()):
            return
        time.sleep(0.2)
    raise SystemExit("daemon did not become ready")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drops", type=int, default=30)
    parser.add_argument("--size", default="1600x1200", help="photo size WxH (default 1600x1200, ~2 MP)")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--gap", type=float, default=0.5, help="idle seconds between drops")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="imgwatch-bench-") as scratch:
        root, data = Path(scratch) / "photos", Path(scratch) / "data"
        root.mkdir()
        env = {**os.environ, "IMGWATCH_WEIGHTS": args.weights, "IMGWATCH_DATA_DIR": str(data)}
        process = subprocess.Popen(
            [sys.executable, "-m", "imgwatch", "watch", str(root), "--log-level", "warning"], env=env
        )
        try:
            client = DaemonClient(data)
            _wait_ready(client, process)
            photos = [_jpeg(5000 + i, (width, height)) for i in range(args.drops)]
            latencies = []
            for i, data_bytes in enumerate(photos):
                target = root / f"drop-{i}.jpg"
                started = time.perf_counter()
                target.write_bytes(data_bytes)
                while not _indexed(data / "catalog.sqlite3", str(target)):
                    time.sleep(0.002)
                latencies.append(time.perf_counter() - started)
                time.sleep(args.gap)
            runs = client.status()["model_runs"]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    report = {
        "benchmark": "drop -> searchable (single files, idle daemon)",
        "machine": f"{os.cpu_count()} CPU cores, {cpu}, Python {platform.python_version()}",
        "weights": args.weights,
        "photo": f"{width}x{height} JPEG",
        "drops": args.drops,
        "model_runs": runs,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(_percentile(latencies, 0.95), 3),
        "mean_s": round(statistics.fmean(latencies), 3),
        "max_s": round(max(latencies), 3),
    }
    markdown = "\n".join(
        [
            f"### {report['benchmark']}",
            "",
            f"- machine: {report['machine']}",
            f"- {args.drops} drops of {report['photo']}, weights {args.weights}, {args.gap} s apart",
            f"- **p50 {report['p50_s']} s**, p95 {report['p95_s']} s, mean {report['mean_s']} s, "
            f"max {report['max_s']} s",
            "",
        ]
    )
    results = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    results.mkdir(exist_ok=True)
    (results / "drop_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "drop_latency.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
