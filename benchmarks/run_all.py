"""The whole benchmark suite in one command, and a report that checks the performance targets.

    python benchmarks/run_all.py            # the full suite (about 15-25 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # a smoke run of every script (a few minutes)

Runs ``ingest.py``, ``drop_latency.py``, ``search_latency.py`` and ``pca_recall.py`` one after the
other (never side by side: each measures ratios within its own run, on a machine left to it), then
writes ``results/REPORT.md`` with each target and whether this run met it, and by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUICK_RESULTS = RESULTS / "quick"
"""Where ``--quick`` runs write: their figures must never overwrite the real ones."""

FULL = {
    "profile_model.py": [],
    "ingest.py": [],
    "drop_latency.py": [],
    "search_latency.py": [],
    "pca_recall.py": [],
}
QUICK = {
    "profile_model.py": [],
    "ingest.py": ["--images", "8", "--classic-images", "4"],
    "drop_latency.py": ["--drops", "5"],
    "search_latency.py": ["--quick"],
    "pca_recall.py": ["--images", "520", "--queries", "20"],
}


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _check(name: str, value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return f"| {name} | not measured | {'≤' if at_most else '≥'} {target} | - |"
    met = value <= target if at_most else value >= target
    margin = (target / value if at_most else value / target) if value else 0.0
    verdict = "met" if met else f"**missed** ({margin:.0%} of target)"
    return f"| {name} | {value} | {'≤' if at_most else '≥'} {target} | {verdict} |"


def report(folder: Path, quick: bool) -> str:
    ingest = _load(folder, "ingest.json") or {}
    drop = _load(folder, "drop_latency.json") or {}
    search = _load(folder, "search_latency_quick.json" if quick else "search_latency.json") or {}
    pca = _load(folder, "pca_recall.json") or {}
    prof = _load(folder, "profile_model.json") or {}
    ratios = ingest.get("ratios", {})
    rows = {(r["vectors"], r["dimension"]): r for r in search.get("rows", [])}
    largest = max((size for size, _ in rows), default=None)
    pca512 = rows.get((largest, 512)) if largest else None
    full = rows.get((largest, 4096)) if largest else None
    lines = [
        "# Benchmark report" + (" (quick smoke run: figures are not meaningful)" if quick else ""),
        "",
        f"Machine: {ingest.get('machine', 'unknown')}; weights {ingest.get('weights', '?')}.",
        "",
        "| target | this run | target | verdict |",
        "| --- | --- | --- | --- |",
        _check("ingest 2 MP JPEG / model-only roofline", ratios.get("2mp-jpeg / model_only"), 0.85),
        _check("ingest 2 MP JPEG / classic one-at-a-time", ratios.get("2mp-jpeg / classic"), 4.5),
        _check("drop -> searchable p50 (s)", drop.get("p50_s"), 0.5, at_most=True),
        _check(
            f"warm search p50 at {largest or '?'} vectors, PCA-512 (s)",
            pca512["warm_p50_s"] if pca512 else None,
            0.25,
            at_most=True,
        ),
        _check("recall@10 PCA-512 vs 4096-d", pca.get("recall_at_10_pca512"), 0.98),
        "",
        f"Also measured: warm search p50 at {largest or '?'} vectors, 4096-d: "
        f"{full['warm_p50_s'] if full else '-'} s; daemon peak RSS "
        f"{full['daemon_peak_rss_mib'] if full else '-'} MiB (4096-d) vs "
        f"{pca512['daemon_peak_rss_mib'] if pca512 else '-'} MiB (PCA-512).",
        "",
        f"Model-only throughput here: {prof.get('model_images_per_s', '-')} images/s, "
        f"{prof.get('model_share_of_matmul_peak', '-')} of this CPU's measured matmul peak "
        "(`profile_model.md`): end-to-end ingest cannot exceed the model, so against the classic "
        "recipe it is bound by model-only / classic.",
        "",
        "Details: `profile_model.md`, `ingest.md`, `drop_latency.md`, "
        f"`{'search_latency_quick.md' if quick else 'search_latency.md'}`, `pca_recall.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every script")
    parser.add_argument("--only", nargs="*", help="run only these scripts (e.g. search_latency.py)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    folder = QUICK_RESULTS if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"IMGWATCH_BENCH_RESULTS": str(folder)}
    for script, extra in plan.items():
        if args.only and script not in args.only:
            continue
        started = time.monotonic()
        print(f"== {script} {' '.join(extra)}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(HERE / script), *extra], check=True, env=env)
        print(f"== {script}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    text = report(folder, args.quick)
    (folder / "REPORT.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
