"""The GPU path, in one command: model-only throughput, GPU-decoded ingest, and fidelity to the CPU.

    python benchmarks/gpu.py                        # on a CUDA machine: the full run (< 5 minutes)
    python benchmarks/gpu.py --quick --device cpu   # a smoke run on the CPU (what CI runs)

Three measurements, on one device, in one run:

1. **Model only**: VGG16 to fc7 (imgwatch's own model: ``FC7(build_vgg16(...))``), channels-last,
   in each reduced precision the device has (fp16 and bf16 on CUDA; fp32 as the baseline), at
   large batches: images/s of the forward pass on 224x224 inputs already on the device.
2. **Ingest end to end**: JPEG files read from disk by a thread pool, decoded *on the GPU* in
   batches (``torchvision.io.decode_jpeg(..., device="cuda")``, nvJPEG), resized (short side 256,
   bilinear with antialias), centre-cropped to 224, normalised, embedded and L2-normalised, the
   vectors copied back to the host. Reading the next batch overlaps the current one. What imgwatch
   adds on top (catalog rows and Milvus writes) is not in this figure; ``benchmarks/ingest.py``
   measures ``imgwatch index`` itself.
3. **Fidelity**: the same files' vectors from this pipeline against imgwatch's CPU fp32 path
   (Pillow decoding, ``images.prepare``), per-file cosine (worst and mean), so that a user who moves
   an index from a CPU to a GPU machine knows how far apart the two kinds of vectors are.

The files are generated 2 MP photos (``imgwatch.samples.photo``, 1600x1200, JPEG quality 90): a set
of distinct ones, each written several times to make the file count (decoding cost is the same).
ImageNet weights when torchvision's cache has them, else ``random:0`` (said in the results; the
throughput does not depend on the weights, the fidelity figure somewhat does).

Writes ``results/gpu.json`` and ``results/gpu.md`` (``--quick``: under ``results/quick/``), or in
``$IMGWATCH_BENCH_RESULTS`` when set.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.nn import functional as nnf
from torchvision.io import decode_jpeg
from torchvision.transforms.v2 import functional as tvf

from imgwatch.samples import photo
from imgwatch.services.extractor import FC7, VGG16Extractor, WeightsSpec, build_vgg16, imagenet_weights_file

HERE = Path(__file__).resolve().parent
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1) * 255.0
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) * 255.0
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _results_dir(quick: bool) -> Path:
    # run_all.py names the folder itself (results/quick/ for its --quick runs), as for every script.
    if os.environ.get("IMGWATCH_BENCH_RESULTS"):
        return Path(os.environ["IMGWATCH_BENCH_RESULTS"])
    return HERE / "results" / "quick" if quick else HERE / "results"


def _weights() -> str:
    try:
        return "imagenet" if imagenet_weights_file().exists() else "random:0"
    except Exception:  # noqa: BLE001 - no torch hub dir configured: no cached weights either
        return "random:0"


def _precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "fp16", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]
    return ["fp32"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_files(folder: Path, files: int, distinct: int, size: tuple[int, int]) -> list[Path]:
    """``files`` JPEGs: ``distinct`` generated photos, each written several times."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    for seed in range(distinct):
        out = io.BytesIO()
        photo(seed, size).save(out, "JPEG", quality=90)
        encoded.append(out.getvalue())
    paths = []
    for n in range(files):
        path = folder / f"IMG_{n:05d}.jpg"
        path.write_bytes(encoded[n % distinct])
        paths.append(path)
    return paths


def _on(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of the fp32 ``model`` in ``dtype`` on ``device``: never converted in place, so every
    precision starts from the fp32 weights (fp16 -> bf16 would lose bits fp32 -> bf16 keeps)."""
    return copy.deepcopy(model).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)


def model_only(
    model: torch.nn.Module, device: torch.device, precision: str, batch: int, rounds: int
) -> float:
    """Images/s of the forward pass on ``batch`` inputs already on the device."""
    dtype = DTYPES[precision]
    net = _on(model, device, dtype)
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)  # warm-up: cuDNN picks its kernels
        _sync(device)
        start = time.perf_counter()
        for _ in range(rounds):
            net(x)
        _sync(device)
    return batch * rounds / (time.perf_counter() - start)


def _decode_batch(blobs: list[bytes], device: torch.device) -> list[torch.Tensor]:
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    if device.type == "cuda":
        return list(decode_jpeg(tensors, device=device, mode=torchvision.io.ImageReadMode.RGB))
    return [decode_jpeg(t, mode=torchvision.io.ImageReadMode.RGB) for t in tensors]


def _prepare(images: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Short side 256 (bilinear, antialiased), centre crop 224, ImageNet normalisation."""
    # In float: antialiased resizing of uint8 is not on every device's kernels.
    crops = [
        tvf.center_crop(tvf.resize(image.float(), [256], antialias=True), [224, 224]) for image in images
    ]
    batch = torch.stack(crops).to(device=device)
    batch = (batch - MEAN.to(device)) / STD.to(device)
    return batch.to(dtype=dtype).contiguous(memory_format=torch.channels_last)


def embed_files(
    model: torch.nn.Module, paths: list[Path], device: torch.device, precision: str, batch: int
) -> tuple[np.ndarray, float]:
    """The files' L2-normalised fc7 vectors through the GPU pipeline, and its images/s (from the
    first read to the last vector on the host)."""
    dtype = DTYPES[precision]
    net = _on(model, device, dtype)
    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    out: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=8) as readers, torch.inference_mode():

        def read(chunk: list[Path]) -> list[bytes]:
            return [p.read_bytes() for p in chunk]

        start = time.perf_counter()
        pending = readers.submit(read, chunks[0])
        for n in range(len(chunks)):
            blobs = pending.result()
            if n + 1 < len(chunks):
                pending = readers.submit(read, chunks[n + 1])  # the next batch's reads overlap this one
            x = _prepare(_decode_batch(blobs, device), device, dtype)
            vectors = nnf.normalize(net(x).float(), dim=1)
            out.append(vectors.cpu().numpy())
        _sync(device)
        elapsed = time.perf_counter() - start
    return np.concatenate(out), len(paths) / elapsed


def cpu_reference(weights: str, paths: list[Path]) -> np.ndarray:
    """imgwatch's own CPU fp32 vectors of ``paths`` (Pillow decoding, images.prepare)."""
    extractor = VGG16Extractor(WeightsSpec.parse(weights), device="cpu", precision="fp32")
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return np.stack(list(pool.map(lambda p: np.asarray(extractor.embed(p.read_bytes())), paths)))
    finally:
        extractor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every step")
    parser.add_argument("--files", type=int, default=None, help="JPEG files to ingest (default 4096)")
    parser.add_argument("--batches", default=None, help="model-only batch sizes, e.g. 64,128,256")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu.py: torch sees no CUDA device; run with --device cpu for the CPU smoke run", file=sys.stderr
        )
        return 2
    device = torch.device(args.device)
    quick = args.quick
    files = args.files or (8 if quick else 4096)
    batches = (
        [int(b) for b in args.batches.split(",")] if args.batches else ([2] if quick else [64, 128, 256])
    )
    ingest_batch = 4 if quick else 128
    rounds = 1 if quick else 20
    size = (320, 240) if quick else (1600, 1200)
    weights = _weights()
    model = FC7(build_vgg16(WeightsSpec.parse(weights))).eval()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "weights": weights,
        "files": files,
        "image_size": list(size),
        "model_only": {},
        "ingest": {},
        "fidelity": {},
    }
    started = time.perf_counter()
    for precision in _precisions(device):
        report["model_only"][precision] = {
            str(b): round(model_only(model, device, precision, b, rounds), 1) for b in batches
        }
        print(f"model only, {precision}: {report['model_only'][precision]} images/s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="imgwatch-gpu-") as tmp:
        paths = make_files(Path(tmp) / "jpegs", files, distinct=min(files, 64), size=size)
        sample = paths[: min(len(paths), 8 if quick else 32)]
        reference = cpu_reference(weights, sample)
        for precision in _precisions(device):
            embed_files(model, paths[: ingest_batch * 2], device, precision, ingest_batch)  # warm-up
            vectors, rate = embed_files(model, paths, device, precision, ingest_batch)
            report["ingest"][precision] = round(rate, 1)
            cosines = np.sum(vectors[: len(sample)] * reference, axis=1)
            report["fidelity"][precision] = {
                "worst": round(float(cosines.min()), 5),
                "mean": round(float(cosines.mean()), 5),
            }
            print(
                f"ingest, {precision}: {rate:.1f} images/s; cosine to CPU fp32 worst {cosines.min():.4f}",
                file=sys.stderr,
            )
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = _results_dir(quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu.md").write_text(_markdown(report))
    print(f"{out / 'gpu.md'}: {report['seconds']} s", file=sys.stderr)
    return 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The GPU path",
        "",
        f"Device: {report['device']}; torch {report['torch']}, torchvision {report['torchvision']}; "
        f"weights `{report['weights']}`; {report['files']} JPEGs of {report['image_size'][0]}x"
        f"{report['image_size'][1]}.",
        "",
        "| precision | model only, images/s by batch | ingest (read + decode + model), images/s | "
        "cosine to CPU fp32, worst / mean |",
        "| --- | --- | --- | --- |",
    ]
    for precision, by_batch in report["model_only"].items():
        batches = ", ".join(f"{b}: {r}" for b, r in by_batch.items())
        fidelity = report["fidelity"].get(precision, {})
        lines.append(
            f"| {precision} | {batches} | {report['ingest'].get(precision, '-')} | "
            f"{fidelity.get('worst', '-')} / {fidelity.get('mean', '-')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
