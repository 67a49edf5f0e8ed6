"""Copies of a photo find the original first: the property the whole product exists for."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgwatch.context import Context
from imgwatch.samples import photo
from imgwatch.search import search_files, search_like
from tests.conftest import index, jpeg_bytes


def _variant(kind: str, original: Image.Image) -> bytes:
    if kind == "resized":
        return jpeg_bytes(
            original.resize((original.width // 3, original.height // 3), Image.Resampling.LANCZOS)
        )
    if kind == "recompressed":
        return jpeg_bytes(original, quality=25)
    if kind == "grayscale":
        return jpeg_bytes(original.convert("L"))
    if kind == "png":
        buffer = io.BytesIO()
        original.save(buffer, "PNG")
        return buffer.getvalue()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["resized", "recompressed", "grayscale", "png"])
def test_altered_copy_finds_its_original_first(ctx: Context, tmp_path: Path, kind: str) -> None:
    root = tmp_path / "library"
    root.mkdir()
    for seed in range(12):
        (root / f"scene{seed}.jpg").write_bytes(jpeg_bytes(photo(seed)))
    index(ctx, root)
    query = tmp_path / f"query-{kind}"
    query.write_bytes(_variant(kind, photo(5)))

    [result] = search_files([str(query)], ctx, k=5)

    assert result.error is None
    assert result.matches[0].path == str(root / "scene5.jpg")
    assert result.matches[0].score > result.matches[1].score


def test_identical_copy_scores_one_and_scores_never_increase(
    ctx: Context, photos: Path, tmp_path: Path
) -> None:
    index(ctx, photos)
    copy = tmp_path / "copy.jpg"
    copy.write_bytes((photos / "photo2.jpg").read_bytes())

    [result] = search_files([str(copy)], ctx, k=5)

    assert result.matches[0].path == str(photos / "photo2.jpg")
    assert result.matches[0].score == pytest.approx(1.0, abs=1e-3)
    scores = [m.score for m in result.matches]
    assert len(scores) == 5
    assert scores == sorted(scores, reverse=True)


def test_k_bounds_the_results_and_many_queries_keep_their_order(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    queries = [str(photos / "photo3.jpg"), str(photos / "trip" / "photo7.jpg"), str(photos / "photo0.jpg")]

    results = search_files(queries, ctx, k=2)

    assert [r.query for r in results] == queries
    assert [r.matches[0].path for r in results] == queries
    assert all(len(r.matches) == 2 for r in results)


def test_query_that_is_not_an_image_is_reported_and_others_still_answer(
    ctx: Context, photos: Path, tmp_path: Path
) -> None:
    index(ctx, photos)
    junk = tmp_path / "junk.jpg"
    junk.write_text("hello")

    bad, good = search_files([str(junk), str(photos / "photo1.jpg")], ctx, k=3)

    assert bad.matches == [] and bad.error and "not a supported image" in bad.error
    assert good.matches[0].path == str(photos / "photo1.jpg")


def test_same_image_gives_the_same_vector_alone_or_in_a_batch(ctx: Context, photos: Path) -> None:
    data = (photos / "photo4.jpg").read_bytes()
    alone = ctx.extractor.embed(data)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(ctx.extractor.embed, [data] * 8))

    assert float(np.linalg.norm(alone)) == pytest.approx(1.0, abs=1e-5)
    for vector in batched:
        assert float(vector @ alone) == pytest.approx(1.0, abs=1e-3)


def test_more_like_this_uses_the_stored_vector_without_the_model_or_the_file(
    ctx: Context, photos: Path, tmp_path: Path
) -> None:
    copy = photos / "trip" / "copy-of-photo2.jpg"
    copy.write_bytes(jpeg_bytes(photo(2, (480, 360)).resize((240, 180))))
    index(ctx, photos)
    query = photos / "photo2.jpg"
    query.unlink()  # gone from disk, still in the catalog until the next index run
    before = ctx.extractor.images_embedded

    [result, missing] = search_like([str(query), str(tmp_path / "never-indexed.jpg")], ctx, k=3)

    assert ctx.extractor.images_embedded == before
    assert result.error is None
    assert result.matches[0].path == str(copy)
    assert str(query) not in [m.path for m in result.matches]  # the query is not its own result
    assert len(result.matches) == 3
    assert missing.matches == [] and missing.error == "not in the index"
