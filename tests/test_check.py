""" "Do I already have this?": ``imgwatch check`` and ``POST /api/check``, on a real index.

Real files, the catalog in SQLite, Milvus Lite, VGG16 with random:0 weights; the CLI as a process;
the routes on real uvicorn servers (the search page's port, the webhook's with its token and HMAC
signature, the control socket) spoken to over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image

from imgwatch.check import DEFAULT_THRESHOLD, CheckMatch, MatchKind, check_images, check_reply, serving_check
from imgwatch.cli import build_parser
from imgwatch.commands.searching import DEFAULT_THRESHOLD as CLI_DEFAULT_THRESHOLD
from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.duplicates import find_duplicates
from imgwatch.ipc import DaemonClient, socket_path
from imgwatch.samples import photo
from imgwatch.search import search_images, search_like
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.serving import Serving
from imgwatch.sources.webhook import SIGNATURE_HEADER, AllowedPaths
from imgwatch.surfaces import start_control_socket
from imgwatch.web import create_app
from imgwatch.web.local import LocalSurface
from imgwatch.web.page import PageSurface, SearchPageBackend, SearchPageConfig
from imgwatch.web.server import HttpServer, bind_unix
from imgwatch.web.webhook import WebhookConfig, WebhookSurface
from tests.conftest import OpenContext, index, jpeg_bytes, serve, write_photo
from tests.harness import imgwatch_cli, socket_parts

TOKEN = "check-token"
SECRET = "check-secret"
LIMIT = 256 * 1024
SIZE = (64, 48)


@dataclass(frozen=True)
class Library:
    """Two indexed photos, and queries: ``a``'s bytes, ``a``'s pixels in other bytes, another photo."""

    a: Path
    copy: bytes
    same_pixels: bytes
    other: bytes


def _png(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as image:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def library(ctx: Context, tmp_path: Path) -> Library:
    root = tmp_path / "photos"
    a = write_photo(root / "a.jpg", 1, size=SIZE)
    write_photo(root / "b.jpg", 2, size=SIZE)
    assert index(ctx, root).added == 2
    copy = a.read_bytes()
    return Library(a, copy, _png(copy), jpeg_bytes(photo(40, SIZE)))


def best_score(ctx: Context, data: bytes) -> float:
    [result] = search_images([("q", data)], ctx, k=1)
    return result.matches[0].score


def test_exact_by_hash_without_the_model_similar_by_vector_none_below_the_threshold(
    ctx: Context, tmp_path: Path
) -> None:
    lib = library(ctx, tmp_path)
    # One default for `check` and `duplicates`, on the command line and in the library and routes.
    assert DEFAULT_THRESHOLD == CLI_DEFAULT_THRESHOLD
    before = ctx.extractor.images_embedded
    [exact] = check_images([("copy.jpg", lib.copy)], ctx)
    assert exact.match == CheckMatch(str(lib.a), 1.0, MatchKind.EXACT) and exact.error is None
    assert ctx.extractor.images_embedded == before  # the catalog's hash answered: no model run

    [similar] = check_images([("same.png", lib.same_pixels)], ctx)
    assert similar.match is not None and similar.match.kind is MatchKind.SIMILAR
    assert similar.match.path == str(lib.a) and similar.match.score >= DEFAULT_THRESHOLD
    # "check says I have it" agrees with "duplicates groups them" at the default threshold.
    (lib.a.parent / "same.png").write_bytes(lib.same_pixels)
    index(ctx, lib.a.parent)
    groups = [set(g.paths) for g in find_duplicates(ctx)]
    assert any({str(lib.a), str(lib.a.parent / "same.png")} <= group for group in groups), groups

    # The threshold is the cut, whatever the scores of random weights are: at the best score less a
    # margin the other photo has a match, at that score plus the margin it has none.
    score = best_score(ctx, lib.other)
    assert score < 1.0 - 1e-3
    [near] = check_images([("other.jpg", lib.other)], ctx, threshold=score - 1e-3)
    [far] = check_images([("other.jpg", lib.other)], ctx, threshold=score + 1e-3)
    assert near.match is not None and near.match.kind is MatchKind.SIMILAR
    assert far.match is None and far.error is None

    unreadable, not_image, still = check_images(
        [
            ("gone.jpg", "file vanished before it could be read"),
            ("notes.jpg", b"hello\n" * 50),
            ("a", lib.copy),
        ],
        ctx,
    )
    assert (unreadable.match, unreadable.error) == (None, "file vanished before it could be read")
    assert not_image.match is None and not_image.error
    assert still.match is not None and still.match.kind is MatchKind.EXACT
    with pytest.raises(ValueError, match="threshold"):
        check_images([("copy.jpg", lib.copy)], ctx, threshold=1.5)


@pytest.mark.slow
def test_the_cli_exits_0_1_3_and_prints_json_lines(open_ctx: OpenContext, tmp_path: Path) -> None:
    with open_ctx() as ctx:
        lib = library(ctx, tmp_path)
        other_score = best_score(ctx, lib.other)
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "copy.jpg").write_bytes(lib.copy)
    (queries / "same.png").write_bytes(lib.same_pixels)
    (queries / "other.jpg").write_bytes(lib.other)
    (queries / "broken.jpg").write_bytes(lib.copy[: len(lib.copy) // 3])
    (queries / "notes.txt").write_bytes(b"not an image\n")
    data_dir = tmp_path / "data"

    had = imgwatch_cli(data_dir, "check", "--json", str(queries / "copy.jpg"), str(queries / "same.png"))
    assert had.returncode == 0, had.stderr.decode(errors="replace")
    lines = [json.loads(line) for line in had.stdout.splitlines()]
    assert [(line["query"], line["match"]["path"], line["match"]["kind"]) for line in lines] == [
        (str(queries / "copy.jpg"), str(lib.a), "exact"),
        (str(queries / "same.png"), str(lib.a), "similar"),
    ]
    assert lines[0]["match"]["score"] == 1.0 and set(lines[1]) == {"query", "match"}

    # A threshold between the other photo's best score and the copies': it has no match.
    threshold = f"{(other_score + 1.0) / 2:.6f}"
    missing = imgwatch_cli(
        data_dir, "check", "--threshold", threshold, str(queries / "other.jpg"), str(queries / "same.png")
    )
    assert missing.returncode == 1, missing.stderr.decode(errors="replace")
    no_match, match = missing.stdout.decode().splitlines()
    assert no_match == f"{queries / 'other.jpg'}: no match at or above {float(threshold):g}"
    assert match.startswith(f"{queries / 'same.png'}: similar ") and match.endswith(f" {lib.a}")

    bad = [queries / "broken.jpg", queries / "gone.jpg", queries / "notes.txt"]
    good = [queries / "copy.jpg", queries / "other.jpg"]
    failed = imgwatch_cli(data_dir, "check", "--json", *map(str, good + bad))
    assert failed.returncode == 3, failed.stderr.decode(errors="replace")
    answers = [json.loads(line) for line in failed.stdout.splitlines()]
    assert [a["query"] for a in answers] == list(map(str, good + bad))
    assert answers[0]["match"]["kind"] == "exact"  # the others are still checked and printed
    # Without --threshold, the duplicates default decides.
    assert (answers[1]["match"] is None) == (other_score < DEFAULT_THRESHOLD) and "error" not in answers[1]
    assert all(a["match"] is None and a["error"] for a in answers[2:])
    stderr = failed.stderr.decode()
    for path in bad:
        assert f"imgwatch: cannot check {path}: " in stderr


def _files(*named: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (name, data, "application/octet-stream")) for name, data in named]


def _page_app(ctx: Context) -> Any:
    serving = Serving(ctx)

    def unused(*_: object) -> Any:
        raise AssertionError("not part of this test")

    backend = SearchPageBackend(
        search_image=lambda data, k: search_images([("upload", data)], ctx, k=k)[0],
        search_like=lambda path, k: search_like([path], ctx, k=k)[0],
        thumbnail=unused,
        path_of=unused,
        check=serving_check(serving),
    )
    return create_app(page=PageSurface(SearchPageConfig("127.0.0.1", 0, None, LIMIT), backend))


def _webhook_app(ctx: Context, root: Path) -> Any:
    config = WebhookConfig("127.0.0.1", 0, TOKEN, SECRET, LIMIT, AllowedPaths((str(root),), {}))
    surface = WebhookSurface(
        config,
        submit=lambda _event: None,
        health=lambda: (200, {"status": "ok"}),
        metrics=lambda: (b"", "text/plain"),
        check=serving_check(Serving(ctx)),
    )
    return create_app(webhook=surface)


@pytest.fixture
def ports(ctx: Context, tmp_path: Path) -> Iterator[tuple[Library, str, str]]:
    """The library, and the URLs of a search page and a webhook serving ``check`` from it."""
    lib = library(ctx, tmp_path)
    page = serve(_page_app(ctx))
    try:
        webhook = serve(_webhook_app(ctx, lib.a.parent))
        try:
            yield lib, f"http://127.0.0.1:{page.port}", f"http://127.0.0.1:{webhook.port}"
        finally:
            webhook.stop()
    finally:
        page.stop()


def _signed(url: str, files: Any, token: str | None = TOKEN, sign: bool = True) -> httpx.Response:
    """A multipart POST, with the bearer token and the HMAC of the very bytes sent."""
    request = httpx.Request("POST", url, files=files)
    body = request.read()
    if token is not None:
        request.headers["Authorization"] = f"Bearer {token}"
    if sign:
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        request.headers[SIGNATURE_HEADER] = f"sha256={digest}"
    with httpx.Client(timeout=120) as client:
        return client.send(request)


def test_the_route_answers_on_both_ports_behind_their_guards(ports: tuple[Library, str, str]) -> None:
    lib, page, webhook = ports
    files = _files(("copy.jpg", lib.copy), ("same.png", lib.same_pixels))
    expected = [("copy.jpg", str(lib.a), "exact"), ("same.png", str(lib.a), "similar")]

    def summary(answer: httpx.Response) -> list[tuple[str, str, str]]:
        assert answer.status_code == 200, answer.text
        return [(r["query"], r["match"]["path"], r["match"]["kind"]) for r in answer.json()["results"]]

    assert summary(httpx.post(f"{page}/api/check", files=files, timeout=120)) == expected
    assert summary(_signed(f"{webhook}/api/check", files)) == expected
    # No match at the threshold: null, not an error.
    strict = httpx.post(f"{page}/api/check?threshold=1", files=_files(("other.jpg", lib.other)), timeout=120)
    assert strict.status_code == 200 and strict.json() == {"results": [{"query": "other.jpg", "match": None}]}

    # The webhook's auth: the token, then the signature of the body; the page on loopback: the Host.
    for answer in (
        _signed(f"{webhook}/api/check", files, token=None),
        _signed(f"{webhook}/api/check", files, token="wrong"),
        _signed(f"{webhook}/api/check", files, sign=False),
    ):
        assert answer.status_code == 401 and answer.json()["error"]
    rebinding = httpx.post(f"{page}/api/check", files=files, headers={"Host": "evil.example"}, timeout=120)
    assert rebinding.status_code == 403

    for base, headers in ((page, {}), (webhook, {"Authorization": f"Bearer {TOKEN}"})):
        document = httpx.get(f"{base}/openapi.json", headers=headers, timeout=60).json()
        validate(document)
        operation = document["paths"]["/api/check"]["post"]
        assert "multipart/form-data" in operation["requestBody"]["content"]
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/CheckAnswer"}
        assert {"400", "413", "415"} <= set(operation["responses"])


def test_bad_bodies_are_4xx_with_a_json_error(ports: tuple[Library, str, str]) -> None:
    lib, page, webhook = ports
    url = f"{page}/api/check"
    refusals = {
        "no file": httpx.post(
            url,
            content=b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--x--\r\n',
            headers={"Content-Type": "multipart/form-data; boundary=x"},
            timeout=60,
        ),
        "not multipart": httpx.post(
            url, content=lib.copy, headers={"Content-Type": "image/jpeg"}, timeout=60
        ),
        "not an image": httpx.post(url, files=_files(("notes.txt", b"hello\n" * 20)), timeout=60),
        "truncated": httpx.post(url, files=_files(("cut.jpg", lib.copy[:300])), timeout=60),
        "too large": httpx.post(url, files=_files(("big.jpg", b"\xff" * (LIMIT + 1))), timeout=60),
        "malformed": httpx.post(
            url,
            content=b"--x\r\nnonsense",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
            timeout=60,
        ),
        "threshold": httpx.post(f"{url}?threshold=2", files=_files(("copy.jpg", lib.copy)), timeout=60),
        "webhook too large": _signed(f"{webhook}/api/check", _files(("big.jpg", b"\xff" * (LIMIT + 1)))),
        "from another site": httpx.post(
            url, files=_files(("copy.jpg", lib.copy)), headers={"Origin": "https://evil.example"}, timeout=60
        ),
    }
    statuses = {name: answer.status_code for name, answer in refusals.items()}
    assert statuses == {
        "no file": 400,
        "not multipart": 415,
        "not an image": 415,
        "truncated": 415,
        "too large": 413,
        "malformed": 400,
        "threshold": 400,
        "webhook too large": 413,
        "from another site": 403,
    }
    for answer in refusals.values():
        assert answer.headers["content-type"] == "application/json" and answer.json()["error"]
    assert "notes.txt" in refusals["not an image"].json()["error"]


def test_the_control_socket_checks_for_the_cli(ctx: Context, tmp_path: Path) -> None:
    lib = library(ctx, tmp_path)
    check = serving_check(Serving(ctx))

    def unused(*_: object) -> Any:
        raise AssertionError("not part of this test")

    surface = LocalSurface(
        status=dict,
        search=unused,
        search_like=unused,
        duplicates=unused,
        index=unused,
        invoke=unused,
        run_job=unused,
        forget_root=unused,
        check=lambda queries, threshold: check_reply(check(queries, threshold)),
    )
    data_dir = tmp_path / "data"  # the context's: no daemon serves it, so the socket's name is free
    server = HttpServer(create_app(local=surface), bind_unix(socket_path(data_dir)), "imgwatch-test-socket")
    server.start()
    try:
        answers = DaemonClient(data_dir).check(
            [("copy.jpg", lib.copy), ("gone.jpg", "file vanished before it could be read")], DEFAULT_THRESHOLD
        )
    finally:
        server.stop()
    assert answers == [
        {"query": "copy.jpg", "match": {"path": str(lib.a), "score": 1.0, "kind": "exact"}},
        {"query": "gone.jpg", "match": None, "error": "file vanished before it could be read"},
    ]


def test_under_and_since_choose_the_files_a_check_may_match_with_and_without_the_daemon(
    settings: Settings, extractor: VGG16Extractor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "photos"
    a = write_photo(root / "in" / "a.jpg", 1, size=SIZE)
    (root / "out").mkdir()
    (root / "out" / "a.jpg").write_bytes(a.read_bytes())
    write_photo(root / "out" / "b.jpg", 2, size=SIZE)
    (root / "empty").mkdir()
    copy, pixels = tmp_path / "query.jpg", tmp_path / "query.png"
    copy.write_bytes(a.read_bytes())
    pixels.write_bytes(_png(a.read_bytes()))
    future = (datetime.now() + timedelta(days=2)).date().isoformat()
    runs = [
        ["--under", str(root / "in")],
        ["--under", str(root / "out")],
        ["--under", str(root / "empty")],
        ["--since", future],
    ]

    def cli(*args: str) -> list[tuple[str | None, str | None]]:
        parsed = build_parser().parse_args(["check", str(copy), str(pixels), *args, "--json"])
        parsed.run(parsed, settings)
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return [(m["path"], m["kind"]) if (m := line["match"]) else (None, None) for line in lines]

    with open_context(settings, command="index", extractor=extractor) as ctx:
        index(ctx, root)
    alone = [cli(*args) for args in runs]
    # The daemon's command holds the data dir's lock: every answer below came through its socket.
    with open_context(settings, command="watch", extractor=extractor) as ctx:
        server = start_control_socket(socket_parts(settings, ctx, root))
        try:
            served = [cli(*args) for args in runs]
        finally:
            server.stop()

    inside, outside = str(a), str(root / "out" / "a.jpg")
    assert alone == served
    assert alone == [
        [(inside, "exact"), (inside, "similar")],
        [(outside, "exact"), (outside, "similar")],
        [(None, None), (None, None)],
        [(None, None), (None, None)],
    ]
