"""Mirror-copy and crop-copy recall@1 of ``search``, plain, with ``--flip``, and with multi-crop queries.

Generated photos (:func:`imgwatch.samples.photo`), each query photo paired with one copy of it in
each index, no near-duplicate distractors:

- the *mirrored* index holds each photo flipped left to right (re-encoded as JPEG);
- the *cropped* index holds a crop of each photo (70-85 % of each side at a random place);
- the *rescaled* index holds each photo at 60 % size, JPEG quality 70 (the ordinary copy: the
  options must not lose it).

recall@1 is the share of queries whose own copy ranks first among the index's entries (exact cosine,
as a FLAT index ranks). The modes are what ``search`` does for one query, with the views it makes
(:func:`imgwatch.search.extra_views`), each file scored by its best view:

- ``plain``: the query's one view;
- ``flip`` (``--flip``): the query and its mirror image (:func:`imgwatch.services.images.mirrored`);
- ``crops`` (``--crops``): the query and its centre and four corners at 80 % of each side
  (:func:`imgwatch.services.images.crop_views`);
- ``crops+flip`` (``--crops --flip``): those six and the mirror image of each.

Each mode's cost is timed per query (decode, the views' preparation and one model batch of them).

    python benchmarks/mirror_recall.py                  # ImageNet weights if cached, else random:0
    python benchmarks/mirror_recall.py --images 20      # a quick run

Writes ``results/mirror_recall.json`` and ``results/mirror_recall.md`` (or under
``$IMGWATCH_BENCH_RESULTS``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from imgwatch.samples import photo
from imgwatch.search import extra_views
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec, imagenet_weights_file
from imgwatch.services.images import CROP_SHARE, prepare

HERE = Path(__file__).resolve().parent
SIZE = (320, 240)
MAX_PIXELS = 10**8

Views = Callable[[bytes], list[bytes]]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _cropped_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    share = rng.uniform(0.70, 0.85)
    w, h = int(width * share), int(height * share)
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h))


def _views(*, flip: bool, crops: bool) -> Views:
    return lambda data: [data, *extra_views(data, flip=flip, crops=crops)]


MODES: dict[str, Views] = {
    "plain": _views(flip=False, crops=False),
    "flip": _views(flip=True, crops=False),
    "crops": _views(flip=False, crops=True),
    "crops+flip": _views(flip=True, crops=True),
}


def _embed(extractor: VGG16Extractor, blobs: list[bytes], batch: int = 16) -> npt.NDArray[np.float32]:
    out = []
    for start in range(0, len(blobs), batch):
        out.append(
            extractor.forward(np.stack([prepare(b, MAX_PIXELS) for b in blobs[start : start + batch]]))
        )
    return np.concatenate(out)


def recall_at_1(index: npt.NDArray[np.float32], per_query: list[npt.NDArray[np.float32]]) -> float:
    """Query ``i``'s copy is index row ``i``; each query's score for a row is its best view's."""
    hits = [int(np.argmax((views @ index.T).max(axis=0))) == i for i, views in enumerate(per_query)]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=50, help="query photos (each with one copy per index)")
    parser.add_argument("--weights", default=None, help="default: imagenet if cached, else random:0")
    args = parser.parse_args()
    weights = args.weights or ("imagenet" if imagenet_weights_file().is_file() else "random:0")
    if weights.startswith("random"):
        print(
            "mirror_recall: WARNING: random VGG16 weights (the ImageNet ones are not cached at "
            f"{imagenet_weights_file()}): these recall figures say little about real searches",
            file=sys.stderr,
        )

    started = time.monotonic()
    rng = np.random.default_rng(7)
    seeds = range(200_000, 200_000 + args.images)
    originals = [photo(seed, SIZE) for seed in seeds]
    queries = [_jpeg(image) for image in originals]
    copies = {
        "mirrored": [_jpeg(ImageOps.mirror(image)) for image in originals],
        "cropped": [_jpeg(_cropped_copy(image, rng)) for image in originals],
        "rescaled": [_jpeg(image.resize((192, 144), Image.Resampling.BICUBIC), 70) for image in originals],
    }
    extractor = VGG16Extractor(WeightsSpec.parse(weights))
    try:
        indexes = {name: _embed(extractor, blobs) for name, blobs in copies.items()}
        extractor.forward(np.stack([prepare(queries[0], MAX_PIXELS)]))  # warm-up, untimed
        views: dict[str, list[npt.NDArray[np.float32]]] = {}
        seconds: dict[str, float] = {}
        for mode, make in MODES.items():
            begin = time.perf_counter()
            views[mode] = [_embed(extractor, make(query)) for query in queries]
            seconds[mode] = (time.perf_counter() - begin) / len(queries)
    finally:
        extractor.close()

    results: dict[str, object] = {"weights": weights, "queries": len(queries), "crop_share": CROP_SHARE}
    for mode, make in MODES.items():
        results[mode] = {
            "views": len(make(queries[0])),
            "ms_per_query": round(seconds[mode] * 1000, 1),
            **{
                f"recall_at_1_{name}": round(recall_at_1(index, views[mode]), 3)
                for name, index in indexes.items()
            },
        }
    results["seconds"] = round(time.monotonic() - started, 1)

    out = Path(os.environ.get("IMGWATCH_BENCH_RESULTS", HERE / "results"))
    out.mkdir(exist_ok=True)
    (out / "mirror_recall.json").write_text(json.dumps(results, indent=2) + "\n")
    note = (
        "**Random weights: these figures say little about real searches** (the ImageNet weights "
        "were not cached)."
        if weights.startswith("random")
        else "ImageNet weights."
    )
    rows = [
        f"| {mode} | {r['views']} | {r['ms_per_query']} | {r['recall_at_1_mirrored']} | "
        f"{r['recall_at_1_cropped']} | {r['recall_at_1_rescaled']} |"
        for mode in MODES
        if isinstance(r := results[mode], dict)
    ]
    markdown = "\n".join(
        [
            "# Mirror- and crop-copy recall@1",
            "",
            f"Weights `{weights}`. {note} {len(queries)} query photos, each with one copy per index, "
            "no other near-duplicates; exact cosine ranking.",
            "",
            "| query mode | model runs | ms per query | recall@1: mirrored | cropped | rescaled |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    (out / "mirror_recall.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
