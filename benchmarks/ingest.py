"""Ingest throughput per precision, measured side by side in one run on the same generated images.

1. the classic recipe: PIL open -> Resize/CenterCrop/normalise -> fp32 VGG16 fc7, one image at a time;
2. model only, in each precision this CPU has (fp32; bf16 where it is native; int8, whose first start
   quantizes and compiles): the extractor on pre-decoded 224x224 batches, in images/s and as a share
   of the CPU's measured peak for that arithmetic (``_peak.py``: fp32/bf16 matmul and conv, int8
   ``torch._int_mm`` and oneDNN's quantized conv; VGG16 to fc7 is 30.9 GFLOP, or GOP, per image);
3. end to end: ``imgwatch index`` (a subprocess) on 2 MP JPEGs with ``IMGWATCH_PRECISION`` set to each
   of those precisions, and on 12 MP JPEGs and PNGs in the default precision. The rate is the
   command's own timing of the indexing work less the model's load (the model loads when the first
   image needs it; its log line gives the load's seconds), so it is the steady rate; the load and the
   start-up around it are reported apart. Every data dir's compile cache is filled beforehand with
   the package model-only int8 compiled, and the int8 run indexes a few other images first (its
   warm-up, which says whether it compiled), so no measured run includes the one-time compile.

    python benchmarks/ingest.py                  # defaults sized for a 2-core CPU (about 8 minutes)
    python benchmarks/ingest.py --images 256     # more images, steadier figures
    python benchmarks/ingest.py --quick          # a smoke run (int8 kept in the user's cache dir)

Writes ``results/ingest.json`` and ``results/ingest.md`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
import torchvision
from _peak import GFLOP_PER_IMAGE, peak_gflops, peak_int8_gops
from PIL import Image
from torchvision import transforms

from imgwatch import allocator
from imgwatch.samples import photo
from imgwatch.services.abc import content_hash
from imgwatch.services.extractor import FC7, VGG16Extractor, WeightsSpec, build_vgg16
from imgwatch.services.images import prepare
from imgwatch.services.precision import cpu_supports_bf16
from imgwatch.services.weights import cache_dir

HERE = Path(__file__).resolve().parent
SIZES = {"2mp-jpeg": (1632, 1224), "12mp-jpeg": (4000, 3000), "2mp-png": (1632, 1224)}
#: The least share of its own precision's model-only rate ``imgwatch index`` must keep (issue 16).
MIN_SHARE_OF_MODEL = 0.85
_LOADED = re.compile(r"lazy_extractor: model loaded in ([\d.]+) s \((\w+)\)")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _write_images(folder: Path, kind: str, count: int, first_seed: int = 10_000) -> list[Path]:
    folder.mkdir(parents=True)
    width, height = SIZES[kind]
    paths = []
    for i in range(count):
        # Generate small and upscale: the scene generator is slow at 12 MP, the decoder is what we measure.
        image = photo(first_seed + i, (width // 4, height // 4)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        path = folder / f"{i:04d}.{'png' if kind.endswith('png') else 'jpg'}"
        if kind.endswith("png"):
            image.save(path, "PNG", compress_level=1)
        else:
            image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def peaks(precisions: list[str], seconds: float) -> dict[str, dict[str, float]]:
    """Per precision: the measured kernels' GFLOP/s (GOP/s for int8) and ``peak``, the best of them."""
    found: dict[str, dict[str, float]] = {}
    for name in precisions:
        rates = (
            peak_int8_gops(seconds)
            if name == "int8"
            else peak_gflops(torch.float32 if name == "fp32" else torch.bfloat16, seconds)
        )
        found[name] = rates | {"peak": max(rates.values(), default=0.0)}
    return found


def model_only(
    weights: str, precision: str, images: list[Path], batch: int, cache: Path | None, passes: int = 2
) -> dict[str, Any]:
    """The fastest of ``passes`` passes over as many images as the other rows, in full batches: the
    roofline's best case, so the ratios against it are conservative. For int8 also the first start
    (quantizing and compiling into ``cache`` unless it holds the package) and a cached start."""
    spec = WeightsSpec.parse(weights)
    started = time.perf_counter()
    try:
        extractor = VGG16Extractor(spec, precision=precision, batch_size=batch, compile_cache=cache)
    except Exception as e:  # noqa: BLE001 - a precision this CPU refuses is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}"}
    row: dict[str, Any] = {"start_s": round(time.perf_counter() - started, 1)}
    row["computes_in"] = extractor.signature.dtype
    try:
        pixels = np.stack([prepare(p.read_bytes(), 10**9) for p in images[:batch]])
        extractor.forward(pixels)  # warm-up
        best = 0.0
        for _ in range(passes):
            started = time.perf_counter()
            done = 0
            while done < len(images):
                done += len(extractor.forward(pixels[: min(batch, len(images) - done)]))
            best = max(best, done / (time.perf_counter() - started))
        row["images_per_s"] = best
        if extractor.int8_fidelity is not None:
            row["fidelity"] = extractor.int8_fidelity.describe()
    finally:
        extractor.close()
    if row["computes_in"] == "int8":
        started = time.perf_counter()
        VGG16Extractor(spec, precision="int8", batch_size=batch, compile_cache=cache).close()
        row["cached_start_s"] = round(time.perf_counter() - started, 1)
    return row


def classic(weights: str, images: list[Path]) -> float:
    model = FC7(build_vgg16(WeightsSpec.parse(weights))).eval()
    preprocess = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    with torch.no_grad():
        model(preprocess(Image.open(images[0]).convert("RGB")).unsqueeze(0))  # warm-up
        started = time.perf_counter()
        for path in images:
            feature = model(preprocess(Image.open(path).convert("RGB")).unsqueeze(0))
            torch.nn.functional.normalize(feature, dim=1)
        return len(images) / (time.perf_counter() - started)


def end_to_end(
    weights: str, folder: Path, data_dir: Path, precision: str | None, batch: int, read_hash_ms: float
) -> dict[str, Any]:
    """One ``imgwatch index`` process on ``folder`` (``precision`` None: the default). Its rate is
    images/s of the plan's work less the model's load; ``error`` says why it failed.

    The model loads when the first image needs it. Meanwhile each of ``index``'s ``batch + 4``
    workers has stat'ed, read and hashed one file and written its pending row (decoding comes
    after, in the model's ``embed``): ``load_overlap_s`` bounds the work the rate leaves out with
    the load, from ``read_hash_ms`` (one file's read and hash, measured in this process)."""
    env = {
        **os.environ,
        "IMGWATCH_WEIGHTS": weights,
        "IMGWATCH_DATA_DIR": str(data_dir),
        "IMGWATCH_BATCH_SIZE": str(batch),
    }
    env.pop("IMGWATCH_PRECISION", None)
    if precision is not None:
        env["IMGWATCH_PRECISION"] = precision
    started = time.perf_counter()
    command = [sys.executable, "-m", "imgwatch", "index", "--log-level", "info", str(folder), "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit status {result.returncode}"}
    summary = json.loads(result.stdout)
    loaded = _LOADED.search(result.stderr)
    load_s, computes_in = (float(loaded[1]), loaded[2]) if loaded else (0.0, "?")
    work_s = max(summary["seconds"] - load_s, 1e-9)
    overlap_s = min(batch + 4, summary["added"]) * read_hash_ms / 1000 if loaded else 0.0
    return {
        "images": summary["added"],
        "images_per_s": summary["added"] / work_s,
        "load_overlap_s": round(overlap_s, 3),
        "load_overlap_share": round(overlap_s / work_s, 3),
        "with_load_images_per_s": summary["added"] / summary["seconds"],
        "computes_in": computes_in,
        "model_load_s": round(load_s, 2),
        "startup_s": round(elapsed - summary["seconds"], 2),
        "elapsed_s": round(elapsed, 1),
        "compiled": "int8: quantizing" in result.stderr,
        "fell_back": "staying in float" in result.stderr,
    }


def file_costs(paths: list[Path], sample: int = 8) -> dict[str, float]:
    """Median milliseconds, in this process on one thread, to read and hash one of ``paths`` as
    ``index`` does, and to decode it to the model's 224x224 input."""
    reads, decodes = [], []
    for path in paths[:sample]:
        started = time.perf_counter()
        data = path.read_bytes()
        content_hash(data)
        read = time.perf_counter()
        prepare(data, 10**9)
        reads.append(read - started)
        decodes.append(time.perf_counter() - read)
    return {"read_hash_ms": round(1000 * median(reads), 2), "decode_ms": round(1000 * median(decodes), 1)}


def _fill_compile_cache(source: Path | None, data_dir: Path) -> None:
    """Put the int8 packages of ``source``, and the runner built beside them, into ``data_dir``'s
    compile cache (hard links where one file system holds both), as if an earlier start had
    compiled there."""
    if source is None or not source.is_dir():
        return
    target = data_dir / "compile-cache"
    target.mkdir(parents=True, exist_ok=True)
    for path in [*source.glob("vgg16-int8-*"), *source.glob("aoti-runner-*.so")]:
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def main() -> None:
    # The allocator as the `imgwatch` command sets it (imgwatch.allocator), so that the model-only
    # and classic rows measured in this process and the `imgwatch index` rows compare like with like.
    allocator.tune()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per kind (default 64)")
    parser.add_argument("--classic-images", type=int, default=24, help="images for the slow classic run")
    parser.add_argument("--warmup-images", type=int, default=4, help="images int8's warm-up index takes")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-int8", action="store_true", help="leave int8 out (it compiles for a minute)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short peak windows, and int8's package kept in the user's cache dir (compiled once per "
        "machine, torch and weights) instead of a fresh one: a smoke run",
    )
    args = parser.parse_args()
    started = time.monotonic()
    precisions = ["fp32", *(["bf16"] if cpu_supports_bf16() else []), *([] if args.no_int8 else ["int8"])]
    with tempfile.TemporaryDirectory(prefix="imgwatch-ingest-") as scratch:
        base = Path(scratch)
        sets = {kind: _write_images(base / kind, kind, args.images) for kind in SIZES}
        warmup = _write_images(base / "warmup", "2mp-jpeg", args.warmup_images, first_seed=20_000)
        costs = {kind: file_costs(paths) for kind, paths in sets.items()}
        measured_peaks = peaks(precisions, 0.3 if args.quick else 1.2)
        classic_rate = classic(args.weights, sets["2mp-jpeg"][: args.classic_images])
        # None: the extractor's default, the user's cache dir, which later quick runs find filled.
        int8_cache = None if args.quick else base / "int8-cache"
        models = {
            p: model_only(args.weights, p, sets["2mp-jpeg"], args.batch, int8_cache if p == "int8" else None)
            for p in precisions
        }
        if "int8" in models:
            int8_cache = int8_cache or cache_dir() / "compile-cache"
        runs: dict[str, dict[str, Any]] = {}
        for precision in precisions:
            data_dir = base / f"data-2mp-jpeg-{precision}"
            if models[precision].get("computes_in") != precision:
                runs[precision] = {"error": f"skipped: model-only {precision} is not available here"}
                continue
            _fill_compile_cache(int8_cache, data_dir)
            cost = costs["2mp-jpeg"]["read_hash_ms"]
            if precision == "int8":
                folder = warmup[0].parent
                runs["int8-warmup"] = end_to_end(args.weights, folder, data_dir, precision, args.batch, cost)
            folder = base / "2mp-jpeg"
            runs[precision] = end_to_end(args.weights, folder, data_dir, precision, args.batch, cost)
        for kind in ("12mp-jpeg", "2mp-png"):
            data_dir = base / f"data-{kind}"
            _fill_compile_cache(int8_cache, data_dir)
            cost = costs[kind]["read_hash_ms"]
            runs[kind] = end_to_end(args.weights, base / kind, data_dir, None, args.batch, cost)
    report = _report(args, measured_peaks, classic_rate, models, runs, time.monotonic() - started)
    report["file_costs_ms"] = costs
    results = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    results.mkdir(exist_ok=True)
    (results / "ingest.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    (results / "ingest.md").write_text(markdown)
    print(markdown)
    failed = [name for name, run in runs.items() if "error" in run and not run["error"].startswith("skipped")]
    if failed:
        raise SystemExit(f"imgwatch index failed: {', '.join(failed)} (see ingest.md)")


def _report(
    args: argparse.Namespace,
    measured_peaks: dict[str, dict[str, float]],
    classic_rate: float,
    models: dict[str, dict[str, Any]],
    runs: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """The figures, with the keys ``run_all.py`` reads (``images_per_s``, ``ratios``, ``startup_s``:
    their ``model_only`` and ``index_2mp-jpeg`` are the default precision's)."""
    bf16_native = cpu_supports_bf16()

    def peak_share(rate: float | None, computes_in: str | None) -> float | None:
        peak = measured_peaks.get(computes_in or "", {}).get("peak")
        return round(rate * GFLOP_PER_IMAGE / peak, 3) if rate and peak else None

    rows: list[dict[str, Any]] = [
        {
            "pipeline": "classic, one at a time, 2 MP JPEG",
            "precision": "fp32",
            "computes_in": "fp32",
            "images_per_s": round(classic_rate, 2),
            "share_of_peak": peak_share(classic_rate, "fp32"),
            "over_classic": 1.0,
        }
    ]
    for name, model in models.items():
        rate = model.get("images_per_s")
        rows.append(
            {
                "pipeline": f"model only, batches of {args.batch}",
                "precision": name,
                **model,
                "images_per_s": round(rate, 2) if rate else None,
                "share_of_peak": peak_share(rate, model.get("computes_in")),
                "over_classic": round(rate / classic_rate, 2) if rate else None,
            }
        )
    default = runs.get("12mp-jpeg", {}).get("computes_in")
    for name, run in runs.items():
        kind = name if name in SIZES else "2mp-jpeg"
        precision = "default" if name in SIZES else name.removesuffix("-warmup")
        rate, used = run.get("images_per_s"), run.get("computes_in")
        model_rate = models.get(used or "", {}).get("images_per_s")
        rows.append(
            {
                "pipeline": f"imgwatch index, {kind}" + (" (warm-up)" if name.endswith("warmup") else ""),
                "precision": precision,
                **run,
                "images_per_s": round(rate, 2) if rate else None,
                "with_load_images_per_s": round(run["with_load_images_per_s"], 2) if rate else None,
                "share_of_peak": peak_share(rate, used),
                "over_model_only": round(rate / model_rate, 3) if rate and model_rate else None,
                "over_classic": round(rate / classic_rate, 2) if rate else None,
            }
        )
    index_rates = {f"index_{k}": runs.get(k, {}).get("images_per_s") for k in ("12mp-jpeg", "2mp-png")}
    index_rates["index_2mp-jpeg"] = runs.get(default or "", {}).get("images_per_s")
    speeds = {
        "model_only": models.get(default or "", {}).get("images_per_s"),
        "classic_one_at_a_time": classic_rate,
        **{f"model_only_{p}": m.get("images_per_s") for p, m in models.items()},
        **index_rates,
        **{f"index_2mp-jpeg_{p}": runs.get(p, {}).get("images_per_s") for p in models},
    }
    ratios: dict[str, float] = {}
    for key, rate in index_rates.items():
        kind = key.removeprefix("index_")
        if rate and speeds["model_only"]:
            ratios[f"{kind} / model_only"] = round(rate / speeds["model_only"], 3)
        if rate:
            ratios[f"{kind} / classic"] = round(rate / classic_rate, 2)
    for precision, model in models.items():
        rate, model_rate = runs.get(precision, {}).get("images_per_s"), model.get("images_per_s")
        if rate and model_rate:
            ratios[f"2mp-jpeg {precision} / model_only {precision}"] = round(rate / model_rate, 3)
            ratios[f"2mp-jpeg {precision} / classic"] = round(rate / classic_rate, 2)
    return {
        "machine": f"{os.cpu_count()} CPU cores, {_cpu()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}",
        "bf16_native": bf16_native,
        "classic_target": 3.0 if bf16_native else 2.0,
        "weights": args.weights,
        "images_per_kind": args.images,
        "default_precision_computes_in": default,
        "seconds": round(seconds, 1),
        "int8_cache": "the user's cache dir" if args.quick else "fresh",
        "peaks": measured_peaks,
        "rows": rows,
        "images_per_s": {k: round(v, 2) for k, v in speeds.items() if v},
        "startup_s": {f"index_{n}": r["startup_s"] for n, r in runs.items() if "images" in r},
        "ratios": ratios,
    }


def _cell(value: object, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return f"{value} ({'met' if value >= target else 'missed'}: ≥ {target})"


def _markdown(report: dict[str, Any]) -> str:
    target = report["classic_target"]
    lines = [
        "### Ingest throughput per precision (one run, same images)",
        "",
        f"- machine: {report['machine']}; native bf16: {report['bf16_native']}; weights {report['weights']}; "
        f"{report['images_per_kind']} images per kind; the run took {report['seconds'] / 60:.1f} minutes",
        f"- default precision computes in: {report['default_precision_computes_in']}",
        "",
        "| pipeline | precision | computes in | images/s | GFLOP/s (GOP/s int8) | share of peak | "
        f"/ model only, same precision (≥ {MIN_SHARE_OF_MODEL} for int8) | / classic (≥ {target} here) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        rate = row.get("images_per_s")
        if "error" in row:
            lines.append(f"| {row['pipeline']} | {row['precision']} | - | {row['error']} | | | | |")
            continue
        over_model = row.get("over_model_only")
        over_classic = row.get("over_classic")
        if row["pipeline"].startswith("imgwatch index") and not row["pipeline"].endswith("(warm-up)"):
            if row["computes_in"] == "int8":
                over_model = _verdict(over_model, MIN_SHARE_OF_MODEL)
            over_classic = _verdict(over_classic, target)
        gflops = round(rate * GFLOP_PER_IMAGE, 1) if rate else None
        share = row.get("share_of_peak")
        lines.append(
            f"| {row['pipeline']} | {row['precision']} | {row.get('computes_in', '-')} | {_cell(rate)} | "
            f"{_cell(gflops)} | {_cell(None if share is None else f'{share:.0%}')} | {_cell(over_model)} | "
            f"{_cell(over_classic)} |"
        )
    lines += [
        "",
        "Peaks measured in this run (the best kernel is the peak a share is taken of):",
        "",
        "| arithmetic | matmul 4096x4096 | conv 3x3 256->512, 28x28, batch 16 | peak |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {_cell(p.get('matmul'))} | {_cell(p.get('conv'))} | {p['peak']} "
            f"{'GOP/s' if name == 'int8' else 'GFLOP/s'} |"
            for name, p in report["peaks"].items()
        ),
        "",
        "int8 matmul is `torch._int_mm` (s8 x s8 -> s32); int8 conv is `torch.ops.onednn.qconv2d_pointwise`",
        "(u8 activations, s8 per-channel weights, fused ReLU), the op the compiled int8 model runs.",
        "",
    ]
    lines += _int8_lines(report["rows"], fresh=report["int8_cache"] == "fresh")
    costs = report.get("file_costs_ms", {}).items()
    lines += [
        "`imgwatch index` rates are its own figure for applying the plan (read, hash, decode, model, Milvus,",
        "SQLite) less the model's load, which happens when the first image needs it. While it loads, each",
        "worker has read and hashed one file (decoding waits for the model), so the rate leaves out at most",
        "that much work (last column, as a share of the run's work). With the load and around it:",
        "",
        "| run | images/s with the load | model load (s) | start-up, scan, exit (s) | process (s) | "
        "left out with the load (≤) |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {row['pipeline']}, {row['precision']} | {row['with_load_images_per_s']} | "
            f"{row['model_load_s']} | {row['startup_s']} | {row['elapsed_s']} | "
            f"{row['load_overlap_s']} s ({row['load_overlap_share']:.1%}) |"
            for row in report["rows"]
            if "model_load_s" in row
        ),
        "",
        "Per file, in this process on one thread (median ms): "
        + "; ".join(f"{k}: read + hash {c['read_hash_ms']}, decode {c['decode_ms']}" for k, c in costs),
        "",
    ]
    return "\n".join(lines)


def _int8_lines(rows: list[dict[str, Any]], *, fresh: bool) -> list[str]:
    model = next((r for r in rows if r["pipeline"].startswith("model") and r["precision"] == "int8"), None)
    if model is None or "cached_start_s" not in model:
        return []
    warmup = next((r for r in rows if r["pipeline"].endswith("(warm-up)")), {})
    compiled = "compiled" if warmup.get("compiled") else "reused the package, no compile"
    compile_s = model["start_s"] - model["cached_start_s"]
    origin = "fresh cache" if fresh else "the user's cache dir, compiled by an earlier run if ~0"
    return [
        f"int8: first start {model['start_s']} s ({origin}: quantize, gate, compile; {compile_s:.1f} s more "
        f"than the cached start, {model['cached_start_s']} s); fidelity: {model.get('fidelity', '-')}; "
        f"`imgwatch index`'s warm-up on {warmup.get('images', '?')} other images in the int8 data dir: "
        f"{warmup.get('elapsed_s', '-')} s as a whole process ({compiled}).",
        "",
    ]


if __name__ == "__main__":
    main()
