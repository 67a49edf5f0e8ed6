"""Retrieval per precision, side by side in one run: does int8 (or bf16) lose what fp32 finds?

The same generated photos (:func:`imgwatch.samples.photo`) are embedded in each precision. The index
holds ``--distractors`` unrelated photos and three near copies of each query photo:

- *rescaled*: 60 % size, JPEG quality 70 (the ordinary copy);
- *cropped*: 70-85 % of each side at a random place;
- *edited*: brightness +25 % and contrast -15 %, JPEG quality 60.

For each precision it reports:

- near-copy recall@1 per kind: the share of queries whose copy ranks first among the distractors and
  that kind's copies (exact cosine, as a FLAT index ranks);
- the same after PCA-512 (fitted on that precision's own index vectors);
- PCA recall@10: the share of the 4096-d top 10 that PCA-512 and PCA-256 still return;
- agreement with fp32: the worst and mean cosine of each vector to its fp32 twin, and how much of
  fp32's top 10 (over the whole index) the precision's own top 10 keeps;
- cross-precision recall@1: fp32 queries against this precision's index (what a query computed in
  another precision finds: ``search`` without a daemon computes in the float class).

    python benchmarks/precision_recall.py                       # every precision this CPU has
    python benchmarks/precision_recall.py --precisions fp32,int8 --queries 40 --distractors 100

Writes ``results/precision_recall.json`` and ``results/precision_recall.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageEnhance

from imgwatch.samples import photo
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec, imagenet_weights_file
from imgwatch.services.images import prepare
from imgwatch.services.pca import PCATransform
from imgwatch.services.precision import cpu_supports_bf16

HERE = Path(__file__).resolve().parent
SIZE = (320, 240)
MAX_PIXELS = 10**8
KINDS = ("rescaled", "cropped", "edited")
K = 10
#: The bar: a precision keeps retrieval when each recall is within this of fp32's.
TOLERANCE = 0.01

Matrix = npt.NDArray[np.float32]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _copy(kind: str, image: Image.Image, rng: np.random.Generator) -> bytes:
    width, height = image.size
    if kind == "rescaled":
        return _jpeg(image.resize((int(width * 0.6), int(height * 0.6)), Image.Resampling.BICUBIC), 70)
    if kind == "cropped":
        share = rng.uniform(0.70, 0.85)
        w, h = int(width * share), int(height * share)
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        return _jpeg(image.crop((left, top, left + w, top + h)))
    edited = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.25)).enhance(0.85)
    return _jpeg(edited, 60)


def _embed(extractor: VGG16Extractor, blobs: list[bytes], batch: int = 16) -> Matrix:
    out = []
    for start in range(0, len(blobs), batch):
        out.append(
            extractor.forward(np.stack([prepare(b, MAX_PIXELS) for b in blobs[start : start + batch]]))
        )
    return np.concatenate(out)


def _top(index: Matrix, queries: Matrix, k: int) -> npt.NDArray[np.int64]:
    return np.argsort(-(queries @ index.T), axis=1)[:, :k]


def _overlap(truth: npt.NDArray[np.int64], found: npt.NDArray[np.int64]) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found, strict=True)]))


def near_copy_recall(distractors: Matrix, copies: Matrix, queries: Matrix) -> float:
    """Query ``i``'s copy is ``copies[i]``; the index is the distractors, then the copies."""
    index = np.concatenate([distractors, copies])
    first = _top(index, queries, 1)[:, 0]
    return float(np.mean(first == len(distractors) + np.arange(len(queries))))


def measure(
    vectors: dict[str, Matrix], reference: dict[str, Matrix] | None, queries_from: Matrix | None
) -> dict[str, float]:
    """The figures of one precision (its ``vectors`` by part; ``reference``: fp32's, when not fp32)."""
    d, q = vectors["distractors"], vectors["queries"]
    row: dict[str, float] = {}
    for kind in KINDS:
        row[f"recall_at_1_{kind}"] = near_copy_recall(d, vectors[kind], q)
    index = np.concatenate([d, *(vectors[kind] for kind in KINDS)])
    truth = _top(index, q, K)
    for dimension in (512, 256):
        if len(index) < dimension:  # a smoke run's index is too small to fit PCA on
            continue
        pca = PCATransform.fit([index], dimension)
        row[f"pca{dimension}_recall_at_10"] = _overlap(truth, _top(pca.apply(index), pca.apply(q), K))
        if dimension == 512:
            projected = {part: pca.apply(v) for part, v in vectors.items()}
            for kind in KINDS:
                row[f"pca512_recall_at_1_{kind}"] = near_copy_recall(
                    projected["distractors"], projected[kind], projected["queries"]
                )
    if reference is not None:
        cosines = np.concatenate([np.sum(vectors[p] * reference[p], axis=1) for p in vectors])
        row["cosine_to_fp32_worst"] = float(cosines.min())
        row["cosine_to_fp32_mean"] = float(cosines.mean())
        reference_index = np.concatenate([reference["distractors"], *(reference[kind] for kind in KINDS)])
        row["top10_agreement_with_fp32"] = _overlap(_top(reference_index, reference["queries"], K), truth)
    if queries_from is not None:
        for kind in KINDS:
            row[f"fp32_queries_recall_at_1_{kind}"] = near_copy_recall(d, vectors[kind], queries_from)
    return {name: round(value, 4) for name, value in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=100, help="query photos (three copies each)")
    parser.add_argument("--distractors", type=int, default=400, help="unrelated photos in the index")
    parser.add_argument("--weights", default=None, help="default: imagenet if cached, else random:0")
    parser.add_argument(
        "--precisions",
        default=None,
        help="comma-separated; default fp32, bf16 where the CPU has it natively, int8",
    )
    args = parser.parse_args()
    weights = args.weights or ("imagenet" if imagenet_weights_file().is_file() else "random:0")
    wanted = (
        args.precisions.split(",")
        if args.precisions
        else ["fp32", *(["bf16"] if cpu_supports_bf16() else []), "int8"]
    )
    if wanted[0] != "fp32":
        parser.error("--precisions must start with fp32: the others are compared with it")
    if weights.startswith("random"):
        print(
            "precision_recall: WARNING: random VGG16 weights (the ImageNet ones are not cached at "
            f"{imagenet_weights_file()}): the recalls say little about real searches, the comparison "
            "between precisions still holds for these weights",
            file=sys.stderr,
        )

    started = time.monotonic()
    rng = np.random.default_rng(11)
    originals = [photo(300_000 + i, SIZE) for i in range(args.queries)]
    blobs: dict[str, list[bytes]] = {
        "distractors": [_jpeg(photo(400_000 + i, SIZE)) for i in range(args.distractors)],
        "queries": [_jpeg(image) for image in originals],
        **{kind: [_copy(kind, image, rng) for image in originals] for kind in KINDS},
    }
    results: dict[str, object] = {
        "weights": weights,
        "queries": args.queries,
        "distractors": args.distractors,
        "tolerance": TOLERANCE,
    }
    embedded: dict[str, dict[str, Matrix]] = {}
    with tempfile.TemporaryDirectory(prefix="imgwatch-precision-recall-") as cache:
        for precision in wanted:
            begin = time.monotonic()
            extractor = VGG16Extractor(
                WeightsSpec.parse(weights), precision=precision, compile_cache=Path(cache)
            )
            try:
                used = extractor.signature.dtype
                embedded[precision] = {part: _embed(extractor, b) for part, b in blobs.items()}
            finally:
                extractor.close()
            fp32 = embedded.get("fp32") if precision != "fp32" else None
            row: dict[str, object] = {"computes_in": used, "seconds": round(time.monotonic() - begin, 1)}
            row |= measure(embedded[precision], fp32, fp32["queries"] if fp32 else None)
            results[precision] = row
    baseline = results["fp32"]
    assert isinstance(baseline, dict)
    for precision in wanted[1:]:
        row = results[precision]
        assert isinstance(row, dict)
        losses = {
            name: round(baseline[name] - row[name], 4)
            for name in baseline
            if "recall" in name and baseline[name] - row[name] > TOLERANCE
        }
        row["keeps_retrieval"] = not losses and row["computes_in"] == precision
        row["losses"] = losses
    results["seconds"] = round(time.monotonic() - started, 1)

    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision_recall.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = _markdown(results, wanted, weights)
    (out / "precision_recall.md").write_text(markdown)
    print(markdown)


def _markdown(results: dict[str, object], wanted: list[str], weights: str) -> str:
    rows = {p: cast(dict[str, object], results[p]) for p in wanted}
    skip = {"computes_in", "seconds", "losses"}
    names = list(dict.fromkeys(n for row in rows.values() for n in row if n not in skip))
    columns = [
        p if row["computes_in"] == p else f"{p} (fell back to {row['computes_in']})"
        for p, row in rows.items()
    ]
    caveat = (
        " (**random: absolute recalls say little about real searches**)"
        if weights.startswith("random")
        else ""
    )
    lines = [
        "# Retrieval per precision",
        "",
        f"Weights `{weights}`{caveat}. {results['queries']} query photos with three near copies each among "
        f"{results['distractors']} distractors; exact cosine ranking. A precision keeps retrieval when no "
        f"recall is more than {TOLERANCE} below fp32's.",
        "",
        "| measure | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(wanted),
        *(
            f"| {name} | " + " | ".join(str(row.get(name, "-")) for row in rows.values()) + " |"
            for name in names
        ),
        "| seconds (embedding all) | " + " | ".join(str(row["seconds"]) for row in rows.values()) + " |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
