"""What bounds ingest on this machine: the model, measured against the CPU's own matmul peak.

Measures, in one run:
1. the CPU's bf16 and fp32 matrix-multiply throughput (4096 x 4096, the best case for the hardware),
2. the extractor's model-only throughput (bf16 + channels-last batches, or fp32 where bf16 is not
   supported) in images/s and GFLOP/s (VGG16 to fc7: 30.9 GFLOP per 224x224 image),
3. the torch profiler's top operators for one batch, so the time is seen to be in the convolutions.

    python benchmarks/profile_model.py

Writes ``results/profile_model.json`` and ``results/profile_model.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from watcher.services.extractor import VGG16Extractor, WeightsSpec

HERE = Path(__file__).resolve().parent
GFLOP_PER_IMAGE = 30.9  # VGG16 convolutions + fc6 + fc7 at 224x224 (2 FLOP per multiply-add)
BATCH = 16


def matmul_gflops(dtype: torch.dtype, size: int = 4096, seconds: float = 5.0) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def main() -> None:
    results: dict[str, object] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    with torch.inference_mode():
        results["matmul_gflops_bf16"] = round(matmul_gflops(torch.bfloat16), 1)
        results["matmul_gflops_fp32"] = round(matmul_gflops(torch.float32), 1)
    extractor = VGG16Extractor(WeightsSpec.parse("random:0"), batch_size=BATCH)
    try:
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, size=(BATCH, 224, 224, 3), dtype=np.uint8)
        extractor.forward(batch)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 20 or runs < 3:
            extractor.forward(batch)
            runs += 1
        images_per_s = runs * BATCH / (time.perf_counter() - started)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            extractor.forward(batch)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
        results["precision"] = extractor.signature.dtype
    finally:
        extractor.close()
    model_gflops = images_per_s * GFLOP_PER_IMAGE
    best = float(
        results["matmul_gflops_bf16"] if results["precision"] == "bf16" else results["matmul_gflops_fp32"]
    )  # type: ignore[arg-type]
    results |= {
        "model_images_per_s": round(images_per_s, 2),
        "model_gflops": round(model_gflops, 1),
        "model_share_of_matmul_peak": round(model_gflops / best, 3),
    }
    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(exist_ok=True)
    (out / "profile_model.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = "\n".join(
        [
            "# What bounds ingest: the model against the CPU's matmul peak",
            "",
            f"{results['cpus']} CPUs, {results['threads']} torch threads.",
            "",
            "| measure | value |",
            "| --- | --- |",
            f"| bf16 matmul 4096x4096 | {results['matmul_gflops_bf16']} GFLOP/s |",
            f"| fp32 matmul 4096x4096 | {results['matmul_gflops_fp32']} GFLOP/s |",
            f"| VGG16 to fc7, {results['precision']}, batches of {BATCH} | "
            f"{results['model_images_per_s']} images/s = {results['model_gflops']} GFLOP/s |",
            f"| model / matmul peak | {results['model_share_of_matmul_peak']:.0%} |",
            "",
            "Top operators of one batch (torch profiler, self CPU time):",
            "",
            "```",
            table,
            "```",
            "",
        ]
    )
    (out / "profile_model.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
