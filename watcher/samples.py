"""Procedural "photos" for tests, benchmarks and the offline demo: no downloads, fully seeded.

Each seed gives a distinct scene (a lit gradient sky, a horizon, textured shapes, fine noise), so
copies of one image are clearly closer to it than other seeds are, as with real photos. As in real
photos, most of the variation is in brightness and colours are muted tints of it: a scene that only
differs from another in hue would not be a fair test of a grayscale copy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A muted colour: a random brightness plus a small tint."""
    brightness = rng.uniform(20, 235)
    tint = rng.normal(0, 18, size=3)
    return tuple(int(c) for c in np.clip(brightness + tint, 0, 255))  # type: ignore[return-value]


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = (np.array(_colour(rng), dtype=np.float32) for _ in range(2))
    t = (ys / max(height - 1, 1))[..., None]
    pixels = top * (1 - t) + bottom * t
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 6, size=2) * 2 * np.pi / np.array([width, height])
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = (rng.uniform(10, 40) + rng.normal(0, 4, size=3)).astype(np.float32)
        pixels += np.sin(xs * fx + ys * fy + phase)[..., None] * amplitude
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    horizon = int(rng.uniform(0.4, 0.8) * height)
    ground = _colour(rng)
    draw.polygon(
        [
            (0, height),
            *[(x, horizon + int(rng.normal(0, height / 20))) for x in np.linspace(0, width, 9)],
            (width, height),
        ],
        fill=ground,
    )
    for _ in range(int(rng.integers(5, 12))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.35) * width, rng.uniform(0.05, 0.35) * height
        color = _colour(rng)
        box = (x0, y0, x0 + w, y0 + h)
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse(box, fill=color)
        elif kind == 1:
            draw.rectangle(box, fill=color, outline=(0, 0, 0), width=int(rng.integers(1, 5)))
        else:
            draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=color)
        for _ in range(int(rng.integers(0, 6))):
            yy = y0 + rng.uniform(0, h)
            draw.line([(x0, yy), (x0 + w, yy + rng.normal(0, 5))], fill=(0, 0, 0), width=1)
    image = image.filter(ImageFilter.GaussianBlur(radius=0.8))
    noise = rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(
        np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8), "RGB"
    )
