"""Self-contained HTML pages of search results and duplicate groups.

Thumbnails are small JPEGs embedded as ``data:`` URIs, so a page can be mailed or moved and still
shows its pictures. Every path is escaped for HTML and shown with undecodable bytes as ``\\xNN``
and control characters visible: file names are data from the disk, not markup.
"""

from __future__ import annotations

import base64
import html
import io
import os
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping, Sequence

from PIL import Image, ImageOps

from imgwatch.duplicates import DuplicateGroup
from imgwatch.search import QueryResult

#: Longest side of a thumbnail, in pixels.
THUMB_SIZE = 200
#: Thumbnails refuse images above this size, as the extractor does by default (Pillow's threshold).
MAX_PIXELS = 89_478_485

#: Reads a file's bytes, or raises (any exception: the page shows a placeholder instead).
Reader = Callable[[str], bytes]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 2em; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 210px; background: #fff; border: 1px solid #ddd; padding: 5px; }
figure.query { border: 2px solid #36c; }
figure img { display: block; max-width: 200px; max-height: 200px; margin: auto; }
.missing { width: 200px; height: 150px; display: flex; align-items: center; justify-content: center;
  text-align: center; background: #eee; color: #777; font-size: 12px; }
figcaption { font-size: 12px; word-break: break-all; white-space: pre-wrap; }
.score { font-weight: bold; font-variant-numeric: tabular-nums; }
.error { color: #b00; }
"""


def display_path(path: str) -> str:
    """``path`` as text a page can show: undecodable bytes as ``\\xNN``, control characters (a
    newline in a name) as ``\\xNN`` too, so that a name cannot pass for two lines or two names."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in text)


def file_url(path: str) -> str:
    """A ``file://`` URL for ``path``, every byte that is not plainly safe percent-encoded."""
    return "file://" + urllib.parse.quote(os.fsencode(os.path.abspath(path)), safe="/")


def thumbnail(data: bytes) -> str:
    """A ``data:image/jpeg`` URI of a small copy of the encoded image ``data``, EXIF orientation
    applied. Raises on anything that is not a decodable image within :data:`MAX_PIXELS`."""
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(data)).decode("ascii")


def thumbnail_jpeg(data: bytes) -> bytes:
    """The JPEG bytes behind :func:`thumbnail` (the daemon's search page serves them as files)."""
    from imgwatch.services.images import FORMATS, to_rgb

    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} is too large for a preview")
        # libjpeg can decode at 1/2..1/8 scale: a 48 MP photo then costs a fraction of the time.
        image.draft(image.mode if image.mode in ("RGB", "L") else None, (THUMB_SIZE, THUMB_SIZE))
        small = to_rgb(ImageOps.exif_transpose(image))
        small.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
    return out.getvalue()


def _picture(data: bytes | None, why_not: str) -> str:
    if data is not None:
        try:
            return f'<img alt="" src="{thumbnail(data)}">'
        except Exception as e:  # noqa: BLE001 - hostile files make Pillow raise anything; never fail a page
            why_not = f"cannot preview: {type(e).__name__}"
    return f'<div class="missing">{html.escape(why_not)}</div>'


def _read(read: Reader, path: str) -> tuple[bytes | None, str]:
    try:
        return read(path), ""
    except Exception as e:  # noqa: BLE001 - unreadable, vanished, too big: a placeholder, not a crash
        return None, f"cannot read: {getattr(e, 'reason', None) or type(e).__name__}"


def _given(data: bytes) -> Reader:
    return lambda _path: data


def _figure(path: str, read: Reader, *, score: float | None = None, css: str = "") -> str:
    data, why_not = _read(read, path)
    caption = f'<span class="score">{score:.4f}</span> ' if score is not None else ""
    shown = html.escape(display_path(path))
    css_class = f' class="{css}"' if css else ""
    return (
        f'<figure{css_class}><a href="{html.escape(file_url(path))}">'
        f"{_picture(data, why_not)}</a><figcaption>{caption}{shown}</figcaption></figure>"
    )


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def search_page(
    results: Sequence[QueryResult], read: Reader, query_images: Mapping[str, bytes] | None = None
) -> str:
    """One section per query: the query image first, then its matches with scores and paths.

    ``query_images`` holds bytes already read for image queries; other queries (``--like`` paths)
    and every match are read with ``read``.
    """
    given = query_images or {}
    body = [f"<h1>imgwatch: {len(results)} quer{'y' if len(results) == 1 else 'ies'}</h1>"]
    for result in results:
        body.append(f"<section><h2>{html.escape(display_path(result.query))}</h2>")
        query_read = _given(given[result.query]) if result.query in given else read
        figures = [_figure(result.query, query_read, css="query")]
        figures += [_figure(m.path, read, score=m.score) for m in result.matches]
        body.append(f'<div class="grid">{"".join(figures)}</div>')
        if result.error:
            body.append(f'<p class="error">{html.escape(display_path(result.error))}</p>')
        elif not result.matches:
            body.append("<p>No matches.</p>")
        body.append("</section>")
    return _page("imgwatch search", body)


def duplicates_page(groups: Sequence[DuplicateGroup], read: Reader, threshold: float) -> str:
    """One section per group of near-duplicates, largest first."""
    body = [f"<h1>imgwatch: {len(groups)} group(s) of near-duplicates (score &ge; {threshold:g})</h1>"]
    for number, group in enumerate(groups, 1):
        body.append(
            f"<section><h2>Group {number}: {len(group.paths)} files, best pair {group.max_score:.4f}</h2>"
        )
        body.append(f'<div class="grid">{"".join(_figure(p, read) for p in group.paths)}</div></section>')
    if not groups:
        body.append("<p>No near-duplicates.</p>")
    return _page("imgwatch duplicates", body)
