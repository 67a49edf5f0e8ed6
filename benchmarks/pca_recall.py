"""Recall@10 of PCA-512 and PCA-256 against the full 4096-d vectors, on generated photos.

The index set is ``--images`` generated photos; the queries are ``--queries`` other photos, each also
present in the index as a resized, re-encoded copy (as a user's query usually has a near twin). For
each query the 10 nearest neighbours by full 4096-d cosine are the truth; recall@10 is the share of
them that the projected search also returns.

    python benchmarks/pca_recall.py                        # seeded random weights (offline)
    python benchmarks/pca_recall.py --weights imagenet     # the real features, if the weights are cached

Writes ``results/pca_recall.json`` and ``results/pca_recall.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from imgwatch.samples import photo
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec
from imgwatch.services.images import prepare
from imgwatch.services.pca import PCATransform

HERE = Path(__file__).resolve().parent
K = 10


def _encoded(seed: int, scale: float = 1.0) -> bytes:
    image = photo(seed, (320, 240))
    if scale != 1.0:
        image = image.resize((int(320 * scale), int(240 * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85 if scale == 1.0 else 70)
    return buffer.getvalue()


def _features(extractor: VGG16Extractor, blobs: list[bytes], batch: int = 32) -> npt.NDArray[np.float32]:
    out = []
    for start in range(0, len(blobs), batch):
        pixels = np.stack([prepare(blob, 10**8) for blob in blobs[start : start + batch]])
        out.append(extractor.forward(pixels))
    return np.concatenate(out)


def _top_k(index: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    return np.argsort(-(queries @ index.T), axis=1)[:, :K]


def recall(truth: npt.NDArray[np.int64], found: npt.NDArray[np.int64]) -> float:
    return float(np.mean([len(set(t) & set(f)) / K for t, f in zip(truth, found, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=900)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--weights", default="random:0")
    args = parser.parse_args()

    started = time.monotonic()
    extractor = VGG16Extractor(WeightsSpec.parse(args.weights))
    try:
        index_blobs = [_encoded(seed) for seed in range(args.images)]
        query_seeds = range(100_000, 100_000 + args.queries)
        index_blobs += [_encoded(seed, 0.6) for seed in query_seeds]  # each query's near twin
        index = _features(extractor, index_blobs)
        queries = _features(extractor, [_encoded(seed) for seed in query_seeds])
    finally:
        extractor.close()
    truth = _top_k(index, queries)
    results: dict[str, object] = {
        "weights": args.weights,
        "index_vectors": len(index),
        "queries": len(queries),
        "k": K,
    }
    for dimension in (512, 256):
        transform = PCATransform.fit([index], dimension)
        found = _top_k(transform.apply(index), transform.apply(queries))
        results[f"recall_at_10_pca{dimension}"] = round(recall(truth, found), 4)
    results["seconds"] = round(time.monotonic() - started, 1)

    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(exist_ok=True)
    (out / "pca_recall.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = "\n".join(
        [
            "# PCA recall@10 against 4096-d",
            "",
            f"Weights `{args.weights}`; {len(index)} indexed vectors, {len(queries)} queries "
            "(each with a resized, re-encoded twin in the index).",
            "",
            "| vectors | recall@10 |",
            "| --- | --- |",
            f"| PCA-512 | {results['recall_at_10_pca512']} |",
            f"| PCA-256 | {results['recall_at_10_pca256']} |",
            "",
        ]
    )
    (out / "pca_recall.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
