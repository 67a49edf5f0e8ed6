"""Ingest throughput, measured side by side in one run on the same generated images.

1. model only: the project's extractor (its best configuration here) on pre-decoded 224x224 batches;
2. the classic recipe: PIL open -> Resize/CenterCrop/normalise -> fp32 VGG16 fc7, one image at a time;
3. end to end: ``imgwatch index`` (a subprocess; the rate is its own timing of the indexing work, and
   the start-up around it is reported apart) on 2 MP JPEGs, 12 MP JPEGs and PNGs.

    python benchmarks/ingest.py                  # defaults sized for a 2-core CPU (a few minutes)
    python benchmarks/ingest.py --images 256     # more images, steadier figures

Writes ``results/ingest.json`` and ``results/ingest.md`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from imgwatch.samples import photo
from imgwatch.services.extractor import FC7, VGG16Extractor, WeightsSpec, build_vgg16
from imgwatch.services.images import prepare

HERE = Path(__file__).resolve().parent
SIZES = {"2mp-jpeg": (1632, 1224), "12mp-jpeg": (4000, 3000), "2mp-png": (1632, 1224)}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _write_images(folder: Path, kind: str, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    width, height = SIZES[kind]
    paths = []
    for i in range(count):
        # Generate small and upscale: the scene generator is slow at 12 MP, the decoder is what we measure.
        image = photo(10_000 + i, (width // 4, height // 4)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        path = folder / f"{i:04d}.{'png' if kind.endswith('png') else 'jpg'}"
        if kind.endswith("png"):
            image.save(path, "PNG", compress_level=1)
        else:
            image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def model_only(weights: str, images: list[Path], batch: int, passes: int = 2) -> float:
    """The fastest of ``passes`` passes over as many images as the other rows, in full batches: the
    roofline's best case, so the ratios against it are conservative."""
    extractor = VGG16Extractor(WeightsSpec.parse(weights), batch_size=batch)
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
        return best
    finally:
        extractor.close()


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


def end_to_end(weights: str, folder: Path, data_dir: Path) -> tuple[float, float]:
    """Images/s of ``imgwatch index`` applying its plan (as it reports it), and the seconds around
    that: interpreter and model start-up, the folder scan, shutdown."""
    env = {**os.environ, "IMGWATCH_WEIGHTS": weights, "IMGWATCH_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "imgwatch", "index", str(folder), "--json"],
        env=env,
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    summary = json.loads(result.stdout)
    return summary["added"] / summary["seconds"], elapsed - summary["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per kind (default 64)")
    parser.add_argument("--classic-images", type=int, default=24, help="images for the slow classic run")
    parser.add_argument("--weights", default="random:0")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="imgwatch-ingest-") as scratch:
        base = Path(scratch)
        sets = {kind: _write_images(base / kind, kind, args.images) for kind in SIZES}
        rows["model_only"] = model_only(args.weights, sets["2mp-jpeg"], args.batch)
        rows["classic_one_at_a_time"] = classic(args.weights, sets["2mp-jpeg"][: args.classic_images])
        for kind in SIZES:
            rate, startup = end_to_end(args.weights, base / kind, base / f"data-{kind}")
            rows[f"index_{kind}"] = rate
            rows[f"index_{kind}_startup_s"] = startup

    report = {
        "machine": f"{os.cpu_count()} CPU cores, {_cpu()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}",
        "weights": args.weights,
        "images_per_kind": args.images,
        "images_per_s": {k: round(v, 2) for k, v in rows.items() if not k.endswith("startup_s")},
        "startup_s": {k: round(v, 2) for k, v in rows.items() if k.endswith("startup_s")},
        "ratios": {
            f"{kind} / model_only": round(rows[f"index_{kind}"] / rows["model_only"], 3) for kind in SIZES
        }
        | {
            f"{kind} / classic": round(rows[f"index_{kind}"] / rows["classic_one_at_a_time"], 2)
            for kind in SIZES
        },
    }
    lines = [
        "### Ingest throughput (one run, same images)",
        "",
        f"- machine: {report['machine']}; weights {args.weights}; {args.images} images per kind",
        "",
        "| pipeline | images/s |",
        "| --- | --- |",
        *(f"| {name} | {rate} |" for name, rate in report["images_per_s"].items()),
        "",
        "| ratio | value |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in report["ratios"].items()),
        "",
        "`imgwatch index` rates are its own figure for applying the plan (read, hash, decode, model, Milvus,",
        f"SQLite). Seconds around that (start-up, model load, scan), excluded above: {report['startup_s']}",
        "",
    ]
    results = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    results.mkdir(exist_ok=True)
    (results / "ingest.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "ingest.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
