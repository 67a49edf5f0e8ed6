"""The HTML pages: valid HTML (html5lib, strict), escaped names, thumbnails, placeholders."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import html5lib
from PIL import Image

from imgwatch.duplicates import DuplicateGroup
from imgwatch.report import display_path, duplicates_page, search_page, thumbnail
from imgwatch.samples import photo
from imgwatch.search import Match, QueryResult
from imgwatch.services.files import LocalFileReader
from tests.conftest import jpeg_bytes

_NS = "{http://www.w3.org/1999/xhtml}"


def _read(path: str) -> bytes:
    return LocalFileReader(50 * 2**20).read(path).data


def _parse(page: str) -> object:
    """Parse as a browser would, failing on any parse error."""
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=True).parse(page.encode("utf-8"))


def _odd_names(root: Path) -> list[str]:
    root.mkdir()
    names = [b"quote \" and ' <b>bold & amp.jpg", b"<script>alert(1)<\\script>.jpg", b"new\nline.jpg"]
    names.append(b"latin1 caf\xe9 \xff.jpg")
    paths = []
    for name in names:
        path = os.path.join(os.fsencode(root), name)
        with open(path, "wb") as f:
            f.write(jpeg_bytes(photo(len(paths), (320, 240))))
        paths.append(os.fsdecode(path))
    return paths


def test_search_page_is_valid_html_with_every_name_escaped(tmp_path: Path) -> None:
    odd = _odd_names(tmp_path / "odd")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(jpeg_bytes(photo(9))[:200])
    gone = str(tmp_path / "deleted-since.jpg")
    matches = [Match(p, 0.99 - i / 100) for i, p in enumerate([*odd, str(corrupt), gone])]
    query = jpeg_bytes(photo(0, (320, 240)))
    results = [
        QueryResult("query <1>.jpg", matches),
        QueryResult("not-an-image.txt", [], error="not a supported image <& co>"),
    ]

    page = search_page(results, _read, {"query <1>.jpg": query})
    document = _parse(page)

    assert "<script>alert" not in page and "<b>bold" not in page
    prefix = str(tmp_path / "odd") + "/"
    captions = [
        "".join(c.itertext()).replace(prefix, "")
        for c in document.iter(f"{_NS}figcaption")  # type: ignore[attr-defined]
    ]
    assert captions[0] == "query <1>.jpg"
    assert captions[1] == "0.9900 quote \" and ' <b>bold & amp.jpg"
    assert captions[3] == "0.9700 new\\x0aline.jpg"  # a newline in a name is shown, not obeyed
    assert captions[4] == "0.9600 latin1 caf\\xe9 \\xff.jpg"
    images = [i.get("src") for i in document.iter(f"{_NS}img")]  # type: ignore[attr-defined]
    assert len(images) == 1 + len(odd)  # the query and the four readable files
    assert all(src.startswith("data:image/jpeg;base64,") for src in images)
    placeholders = [
        "".join(d.itertext())
        for d in document.iter(f"{_NS}div")  # type: ignore[attr-defined]
        if d.get("class") == "missing"
    ]
    vanished = "cannot read: file vanished before it could be read"
    # The truncated JPEG, the deleted match, and the failed query (nothing was read for it).
    assert placeholders == ["cannot preview: OSError", vanished, vanished]
    errors = [p for p in document.iter(f"{_NS}p") if p.get("class") == "error"]  # type: ignore[attr-defined]
    assert "".join(errors[0].itertext()) == "not a supported image <& co>"
    links = [a.get("href") for a in document.iter(f"{_NS}a")]  # type: ignore[attr-defined]
    assert links[4].endswith("/latin1%20caf%E9%20%FF.jpg")


def test_duplicates_page_is_valid_html(tmp_path: Path) -> None:
    odd = _odd_names(tmp_path / "odd")
    groups = [DuplicateGroup(odd[:3], 0.998), DuplicateGroup([*odd[3:], "/gone.jpg"], 0.991)]
    page = duplicates_page(groups, _read, 0.99)
    document = _parse(page)
    headings = ["".join(h.itertext()) for h in document.iter(f"{_NS}h2")]  # type: ignore[attr-defined]
    assert headings == ["Group 1: 3 files, best pair 0.9980", "Group 2: 2 files, best pair 0.9910"]
    _parse(duplicates_page([], _read, 0.95))


def test_thumbnails_are_small_and_upright() -> None:
    # A landscape picture stored sideways, with EXIF orientation 6 ("rotate 90 degrees clockwise").
    sideways = photo(3, (600, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    uri = thumbnail(jpeg_bytes(sideways, exif=exif.tobytes()))

    small = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert small.format == "JPEG"
    assert small.size == (100, 200)  # upright: portrait, longest side 200


def test_display_path_keeps_text_and_shows_bytes() -> None:
    assert display_path("/photos/été.jpg") == "/photos/été.jpg"
    assert display_path(os.fsdecode(b"/p/\xff\tx.jpg")) == "/p/\\xff\\x09x.jpg"
