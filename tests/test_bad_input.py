"""Bad input is recorded with a reason, the run goes on, and nothing else is affected."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgwatch.context import Context
from imgwatch.errors import ImageError
from imgwatch.indexer import plan, run_plan
from imgwatch.samples import photo
from imgwatch.scan import ScanRules
from imgwatch.search import search_files
from imgwatch.services.abc import FileState
from imgwatch.services.images import prepare
from tests.conftest import index, jpeg_bytes


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny, valid PNG header claiming an enormous image: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _bad_files(root: Path) -> dict[str, str]:
    """Write every kind of bad input; returns name -> a phrase its failure reason must contain."""
    good = jpeg_bytes(photo(1))
    png = io.BytesIO()
    photo(2).save(png, "PNG")
    files = {
        "zero.jpg": (b"", "empty file"),
        "text.jpg": (b"this is not an image at all\n" * 10, "not a supported image"),
        "truncated.jpg": (good[: len(good) // 2], "cannot decode"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "cannot decode"),
        "garbage-after-header.jpg": (good[:200] + bytes(range(256)) * 8, "cannot decode"),
        "bomb.png": (_png_header_only(30_000, 30_000), "megapixels"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    (root / "dangling.jpg").symlink_to(root / "does-not-exist.jpg")
    return {name: phrase for name, (_, phrase) in files.items()} | {"dangling.jpg": "broken symbolic link"}


def test_every_kind_of_bad_file_is_recorded_and_the_rest_indexes(ctx: Context, photos: Path) -> None:
    expected = _bad_files(photos)
    os.mkfifo(photos / "pipe.jpg")  # must neither hang the run nor count as an image

    summary = index(ctx, photos)

    assert summary.added == 8
    assert summary.failed == len(expected)
    reasons = {Path(p).name: reason for p, reason in summary.failures}
    for name, phrase in expected.items():
        assert phrase in reasons[name], (name, reasons[name])
    failed = {Path(r.path).name: r.error for r in ctx.catalog.failures()}
    assert failed == reasons
    assert ctx.vectors.count() == 8
    assert search_files([str(photos / "photo3.jpg")], ctx, k=1)[0].matches[0].path == str(
        photos / "photo3.jpg"
    )


def test_failed_file_that_gets_fixed_is_indexed_next_time(ctx: Context, photos: Path) -> None:
    broken = photos / "later.jpg"
    broken.write_bytes(jpeg_bytes(photo(9))[:500])
    assert index(ctx, photos).failed == 1

    broken.write_bytes(jpeg_bytes(photo(9)))
    summary = index(ctx, photos)

    assert (summary.added, summary.failed) == (1, 0)
    assert ctx.catalog.get(str(broken)).state is FileState.INDEXED  # type: ignore[union-attr]


def test_indexed_file_that_becomes_corrupt_loses_its_stale_vector(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    target = photos / "photo0.jpg"
    record = ctx.catalog.get(str(target))
    assert record is not None
    target.write_bytes(b"\xff\xd8\xff garbage")

    summary = index(ctx, photos)

    assert summary.failed == 1
    assert ctx.vectors.get_vectors([record.id]) == {}
    assert str(target) not in [
        m.path for m in search_files([str(photos / "photo1.jpg")], ctx, k=10)[0].matches
    ]


def test_file_vanishing_between_scan_and_read_is_recorded(ctx: Context, photos: Path) -> None:
    work = plan([str(photos)], ScanRules(), ctx)
    (photos / "photo2.jpg").unlink()

    summary = run_plan(work, ctx, workers=4)

    assert (summary.added, summary.failed) == (7, 1)
    assert summary.failures == [(str(photos / "photo2.jpg"), "file vanished before it could be read")]
    assert index(ctx, photos).removed == 1


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root reads any file; tests/test_cli.py covers it with root's read capabilities dropped",
)
def test_unreadable_file_is_recorded(ctx: Context, photos: Path) -> None:
    (photos / "photo1.jpg").chmod(0)

    summary = index(ctx, photos)

    assert summary.failures == [(str(photos / "photo1.jpg"), "permission denied")]


def test_48_megapixel_jpeg_indexes(ctx: Context, tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    big = photo(80, size=(1000, 750)).resize((8000, 6000), Image.Resampling.BILINEAR)
    big.save(root / "48mp.jpg", "JPEG", quality=85)

    summary = index(ctx, root)

    assert (summary.added, summary.failed) == (1, 0)


def test_big_jpeg_is_decoded_at_reduced_scale() -> None:
    big = photo(81, size=(1000, 750)).resize((6000, 4500))
    image = Image.open(io.BytesIO(jpeg_bytes(big)))
    image.draft("RGB", (256, 256))
    assert image.size == (750, 563)  # 1/8 scale: what prepare() decodes instead of 27 megapixels
    full = prepare(jpeg_bytes(big), max_pixels=10**9)
    assert full.shape == (224, 224, 3)


@pytest.mark.parametrize(
    "mode", ["L", "LA", "P", "PA-transparent", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr", "LAB"]
)
def test_every_pixel_mode_becomes_rgb(mode: str) -> None:
    base = photo(90, size=(320, 240))
    if mode == "PA-transparent":
        image = base.convert("P")
        image.info["transparency"] = 0
        fmt = "PNG"
    elif mode in ("I;16", "I", "F"):
        grey = np.asarray(base.convert("L"), dtype=np.float64)
        scale = {"I;16": 257.0, "I": 257.0 * 100, "F": 1 / 255.0}[mode]
        array = (grey * scale).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        image = Image.fromarray(array)
        assert image.mode == mode
        fmt = "TIFF"
    else:
        image = base.convert(mode)
        fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "LAB": "TIFF"}.get(mode, "PNG")
    buffer = io.BytesIO()
    image.save(buffer, fmt)

    pixels = prepare(buffer.getvalue(), max_pixels=10**8)

    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    # Sensible, not just the right shape: brightness survives the conversion, with no clipping to white.
    reference = prepare(jpeg_bytes(base), max_pixels=10**8).astype(float).mean()
    assert abs(pixels.astype(float).mean() - reference) < 40, mode


def test_transparency_is_composited_over_white() -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")

    assert prepare(buffer.getvalue(), max_pixels=10**8).min() == 255


def test_exif_orientation_is_applied(ctx: Context) -> None:
    upright = photo(91, size=(480, 360))
    rotated = upright.rotate(90, expand=True)  # stored turned 90 degrees anticlockwise...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with "turn 90 degrees clockwise to view" in its EXIF

    stored_sideways = ctx.extractor.embed(jpeg_bytes(rotated, exif=exif.tobytes()))
    without_tag = ctx.extractor.embed(jpeg_bytes(rotated))
    reference = ctx.extractor.embed(jpeg_bytes(upright))

    assert float(stored_sideways @ reference) > 0.99
    assert float(stored_sideways @ reference) > float(without_tag @ reference)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [photo(92, size=(256, 256)), photo(93, size=(256, 256))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    first = io.BytesIO()
    frames[0].save(first, "GIF")

    np.testing.assert_array_equal(prepare(buffer.getvalue(), 10**8), prepare(first.getvalue(), 10**8))


def test_prepare_refuses_partial_decodes() -> None:
    data = jpeg_bytes(photo(94))
    for cut in (len(data) // 4, len(data) // 2, len(data) - 10):
        with pytest.raises(ImageError):
            prepare(data[:cut], max_pixels=10**8)
