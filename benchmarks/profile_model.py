"""What bounds ingest on this machine: the model, measured against the CPU's own matmul peak.

Measures, in one run:
1. the CPU's bf16 and fp32 peak: the better of a 4096 x 4096 matrix multiply and one large 3x3
   convolution in channels-last (the oneDNN path the model's convolutions take), best of three,
2. the extractor's model-only throughput (bf16 + channels-last batches, or fp32 where bf16 is not
   supported) in images/s and GFLOP/s (VGG16 to fc7: 30.9 GFLOP per 224x224 image),
3. the torch profiler's top operators for one batch, so the time is seen to be in the convolutions,
4. model-only images/s per precision side by side (fp32 and bf16 eager, int8 compiled) at batches of
   8 and 16, with int8's fidelity gate numbers and its first (quantize + compile) and cached start.

    python benchmarks/profile_model.py
    python benchmarks/profile_model.py --quick      # short windows: a smoke run
    python benchmarks/profile_model.py --no-int8    # skip int8 (a minute to quantize and compile)

Writes ``results/profile_model.json`` and ``results/profile_model.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _peak import GFLOP_PER_IMAGE, best_rate, peak_gflops
from torch.profiler import ProfilerActivity, profile

from imgwatch.services.extractor import VGG16Extractor, WeightsSpec

HERE = Path(__file__).resolve().parent
BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timing windows: a smoke run")
    parser.add_argument("--no-int8", action="store_true", help="leave int8 out of the per-precision table")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.2
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
        images_per_s = best_rate(lambda: extractor.forward(batch), BATCH * 1e9, 3 * seconds)
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
    per_precision = precisions(seconds, with_int8=not args.no_int8)
    results["per_precision"] = per_precision
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
            "Model only, per precision (images/s; int8: convolutions compiled, fc6/fc7 fp32):",
            "",
            "| precision | batch 8 | batch 16 | start | fidelity to fp32 |",
            "| --- | --- | --- | --- | --- |",
            *[_precision_row(name, row) for name, row in per_precision.items()],
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


def precisions(seconds: float, *, with_int8: bool) -> dict[str, dict[str, object]]:
    """Model-only images/s of each precision this CPU has, at batches of 8 and 16; for int8 also the
    first start (quantize, gate, compile into an empty cache) and a cached start, in seconds."""
    rng = np.random.default_rng(0)
    batches = {size: rng.integers(0, 256, size=(size, 224, 224, 3), dtype=np.uint8) for size in (8, 16)}
    with tempfile.TemporaryDirectory(prefix="imgwatch-int8-") as cache:
        return {
            name: _one_precision(name, Path(cache), batches, seconds)
            for name in ["fp32", "bf16"] + (["int8"] if with_int8 else [])
        }


def _started(precision: str, cache: Path) -> tuple[VGG16Extractor, float]:
    started = time.perf_counter()
    spec = WeightsSpec.parse("random:0")
    model = VGG16Extractor(spec, precision=precision, batch_size=16, compile_cache=cache)
    return model, round(time.perf_counter() - started, 1)


def _one_precision(
    name: str, cache: Path, batches: dict[int, np.ndarray], seconds: float
) -> dict[str, object]:
    try:
        model, start_s = _started(name, cache)
    except Exception as e:  # noqa: BLE001 - a precision this CPU refuses is reported, not fatal
        return {"error": str(e)}
    row: dict[str, object] = {"start_s": start_s, "computes_in": model.signature.dtype}
    try:
        for size, batch in batches.items():
            rate = best_rate(functools.partial(model.forward, batch), size * 1e9, 3 * seconds)
            row[f"batch_{size}_images_per_s"] = round(rate, 2)
        if model.signature.dtype == "int8":
            again, row["cached_start_s"] = _started(name, cache)
            again.close()
            assert model.int8_fidelity is not None
            row["fidelity"] = model.int8_fidelity.describe()
    finally:
        model.close()
    return row


def _precision_row(name: str, row: dict[str, object]) -> str:
    if "error" in row:
        return f"| {name} | - | - | - | {row['error']} |"
    start = f"{row['start_s']} s" + (
        f" (cached: {row['cached_start_s']} s)" if "cached_start_s" in row else ""
    )
    used = row["computes_in"]
    label = name if used == name else f"{name} (fell back to {used})"
    return (
        f"| {label} | {row['batch_8_images_per_s']} | {row['batch_16_images_per_s']} | {start} | "
        f"{row.get('fidelity', '')} |"
    )


if __name__ == "__main__":
    main()
