"""What bounds ingest on this machine: the model, measured against the CPU's own matmul peak.

Measures, in one run:
1. the CPU's bf16 and fp32 peak: the better of a 4096 x 4096 matrix multiply and one large 3x3
   convolution in channels-last (the oneDNN path the model's convolutions take), best of three,
2. the extractor's model-only throughput (bf16 + channels-last batches, or fp32 where bf16 is not
   supported) in images/s and GFLOP/s (VGG16 to fc7: 30.9 GFLOP per 224x224 image),
3. the torch profiler's top operators for one batch, so the time is seen to be in the convolutions.

    python benchmarks/profile_model.py
    python benchmarks/profile_model.py --quick      # short windows: a smoke run

Writes ``results/profile_model.json`` and ``results/profile_model.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from imgwatch.services.extractor import VGG16Extractor, WeightsSpec

HERE = Path(__file__).resolve().parent
GFLOP_PER_IMAGE = 30.9  # VGG16 convolutions + fc6 + fc7 at 224x224 (2 FLOP per multiply-add)
BATCH = 16


def _best_rate(run: Callable[[], object], flop: float, seconds: float = 1.2, tries: int = 3) -> float:
    """GFLOP/s of the fastest of ``tries`` timed windows (a shared machine only ever slows a window)."""
    run()
    best = 0.0
    for _ in range(tries):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run()
            runs += 1
        best = max(best, flop * runs / (time.perf_counter() - started) / 1e9)
    return best


def peak_gflops(dtype: torch.dtype, seconds: float) -> dict[str, float]:
    size = 4096
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    # A VGG16 conv4 layer at batch 16: 256 -> 512 channels, 3x3, 28x28.
    conv = torch.nn.Conv2d(256, 512, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(16, 256, 28, 28).to(dtype).contiguous(memory_format=torch.channels_last)
    conv_flop = 2 * 16 * 28 * 28 * 512 * 256 * 9
    return {
        "matmul": round(_best_rate(lambda: torch.mm(a, b), 2 * size**3, seconds), 1),
        "conv": round(_best_rate(lambda: conv(x), conv_flop, seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timing windows: a smoke run")
    seconds = 0.3 if parser.parse_args().quick else 1.2
    results: dict[str, object] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    peaks: dict[str, float] = {}
    with torch.inference_mode():
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            rates = peak_gflops(dtype, seconds)
            peaks[name] = max(rates.values())
            results |= {f"matmul_gflops_{name}": rates["matmul"], f"conv_gflops_{name}": rates["conv"]}
            results[f"peak_gflops_{name}"] = peaks[name]
    extractor = VGG16Extractor(WeightsSpec.parse("random:0"), batch_size=BATCH)
    try:
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, size=(BATCH, 224, 224, 3), dtype=np.uint8)
        images_per_s = _best_rate(lambda: extractor.forward(batch), BATCH * 1e9, 3 * seconds)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            extractor.forward(batch)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
        results["precision"] = extractor.signature.dtype
    finally:
        extractor.close()
    model_gflops = images_per_s * GFLOP_PER_IMAGE
    peak = peaks["bf16" if results["precision"] == "bf16" else "fp32"]
    results |= {
        "model_images_per_s": round(images_per_s, 2),
        "model_gflops": round(model_gflops, 1),
        "model_share_of_peak": round(model_gflops / peak, 3),
        "bf16_over_fp32_peak": round(peaks["bf16"] / peaks["fp32"], 2),
        "amx": " amx_bf16" in Path("/proc/cpuinfo").read_text(),
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
            f"| bf16 matmul 4096x4096 / conv 3x3 256->512 | {results['matmul_gflops_bf16']} / "
            f"{results['conv_gflops_bf16']} GFLOP/s |",
            f"| fp32 matmul 4096x4096 / conv 3x3 256->512 | {results['matmul_gflops_fp32']} / "
            f"{results['conv_gflops_fp32']} GFLOP/s |",
            f"| VGG16 to fc7, {results['precision']}, batches of {BATCH} | "
            f"{results['model_images_per_s']} images/s = {results['model_gflops']} GFLOP/s |",
            f"| model / peak ({results['precision']}) | {results['model_share_of_peak']:.0%} |",
            f"| bf16 peak / fp32 peak | {results['bf16_over_fp32_peak']}x (AMX: {results['amx']}) |",
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
