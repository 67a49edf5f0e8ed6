"""Decoding and preprocessing: encoded bytes -> a 224x224 RGB array, exactly as the VGG recipe wants.

Resize the short side to 256 (bilinear), centre-crop 224; the ImageNet mean/std normalisation happens
on the batch, in the extractor. Everything here is plain Pillow/numpy and runs in worker threads:
Pillow releases the GIL while decoding, so decoding overlaps the model.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import torchvision.transforms.functional as tvf
from PIL import Image, ImageOps, UnidentifiedImageError

from imgwatch.errors import ImageError

#: Decoders we accept, chosen by content, never by file extension.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF")

RESIZE = 256
CROP = 224

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255)


def prepare(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Decode ``data`` completely and return the 224x224x3 uint8 crop the model sees.

    Raises :class:`ImageError` with a human-readable reason for anything that is not a complete,
    decodable image within ``max_pixels``: partial decodes are never used.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    image = _decode(data, max_pixels)
    image = tvf.resize(image, [RESIZE], interpolation=tvf.InterpolationMode.BILINEAR)
    image = tvf.center_crop(image, [CROP, CROP])
    return np.asarray(image, dtype=np.uint8)


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    image: Image.Image
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            "not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF) or corrupt header"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb: {e}") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt headers
        raise ImageError(f"corrupt image header: {e}") from None

    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.0f} (max_pixels); refused as a possible decompression bomb"
        )
    if width == 0 or height == 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if image.format in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the short side stays >= 256: a 48 MP photo
        # then costs a fraction of the memory and time, and the 256-px resize hides the difference.
        image.draft(image.mode if image.mode in ("RGB", "L") else None, (RESIZE, RESIZE))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 - truncation, bad chunks and codec errors all mean "corrupt"
        raise ImageError(f"cannot decode image data ({type(e).__name__}: {e})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a person would expect to see it.

    Transparency is composited over white (a transparent logo is a logo on a page, not on black);
    16/32-bit and float greyscale are scaled to 8 bits instead of being clipped at 255.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image), mode), mode="L").convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(pixels: npt.NDArray[np.generic], mode: str) -> npt.NDArray[np.uint8]:
    values = pixels.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        low, high = float(values.min()), float(values.max())
        if mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif low >= 0.0 and high <= 65535.0:
            scaled = values / 257.0
        else:
            scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def mirrored(data: bytes, max_pixels: int) -> bytes:
    """``data`` mirrored left to right, as PNG bytes whose :func:`prepare` crop is the mirror image of
    ``prepare(data)``'s (to a pixel where the resized width leaves an odd margin).

    Shrunk to the short side :data:`RESIZE` before mirroring, so that the PNG stays small and
    :func:`prepare`'s own resize leaves it as it is; PNG, so nothing is lost to a second encoding.
    Raises :class:`ImageError` as :func:`prepare` does.
    """
    image = _shrunk(data, max_pixels, RESIZE)
    return _png(ImageOps.mirror(image))


#: Each side of a multi-crop view (:func:`crop_views`), as a share of the query's.
CROP_SHARE = 0.8


def crop_views(data: bytes, max_pixels: int, *, mirror: bool = False) -> list[bytes]:
    """The centre and four corners of ``data``, each :data:`CROP_SHARE` of each side, as PNG bytes:
    the views a multi-crop query adds to the image itself, so that a cropped copy meets a view that
    shows about what it shows. With ``mirror``, then the mirror image of ``data`` and of each crop
    (in that order): 11 views, which score mirrored crops too.

    Decoded once and shrunk first (to the short side that makes each crop's :data:`RESIZE`; never
    enlarged, so no view has more pixels than ``data``), so a 24-megapixel photo costs one decode,
    not one per view, and :func:`prepare` barely resizes the crops again. Raises
    :class:`ImageError` as :func:`prepare` does.
    """
    image = _shrunk(data, max_pixels, round(RESIZE / CROP_SHARE), enlarge=False)
    width, height = image.size
    w, h = max(1, round(width * CROP_SHARE)), max(1, round(height * CROP_SHARE))
    corners = [((width - w) // 2, (height - h) // 2), (0, 0), (width - w, 0), (0, height - h)]
    corners.append((width - w, height - h))
    crops = [image.crop((x, y, x + w, y + h)) for x, y in corners]
    if mirror:
        crops += [ImageOps.mirror(view) for view in (image, *crops)]
    return [_png(view) for view in crops]


def _shrunk(data: bytes, max_pixels: int, short_side: int, *, enlarge: bool = True) -> Image.Image:
    """``data`` decoded as :func:`prepare` decodes it, resized to ``short_side`` (bilinear); left as
    it is when it is smaller and not ``enlarge``."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    image = _decode(data, max_pixels)
    if not enlarge and min(image.size) <= short_side:
        return image
    resized: Image.Image = tvf.resize(image, [short_side], interpolation=tvf.InterpolationMode.BILINEAR)
    return resized


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()
