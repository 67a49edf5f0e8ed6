"""The daemon's search page: over HTTP, and in a real headless chromium driven by selenium."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import socket
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imgwatch.context import Context
from imgwatch.errors import ConfigError
from imgwatch.samples import photo
from imgwatch.thumbnails import ThumbnailCache, ThumbnailForbiddenError, ThumbnailNotFoundError, Thumbnails
from imgwatch.web.page import SearchPageConfig, path_from_ref, path_ref
from imgwatch.web.page_token import TOKEN_FILE
from imgwatch.web.server import HttpServer
from tests.conftest import index, jpeg_bytes, own_address, serve, stub_page_app, write_photo
from tests.harness import RunningDaemon, imgwatch_cli, start_daemon, wait_until

# One worker for the module: its module-scoped daemon (or model) is then started once.
pytestmark = pytest.mark.xdist_group("search-page")

TOKEN = "page-token-\u00e9"  # non-ASCII on purpose: compared as bytes, in constant time
MAX_UPLOAD = 1024 * 1024
BROWSER_TIMEOUT = 90


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


# ---- the HTTP layer on its own: auth, refs ------------------------------------------------------


@given(st.binary(min_size=1, max_size=64).filter(lambda b: b"\0" not in b))
def test_path_refs_round_trip_any_bytes(raw: bytes) -> None:
    path = os.fsdecode(raw)
    ref = path_ref(path)
    assert ref.isascii() and not set(ref) & set("?&#+ ")
    assert path_from_ref(ref) == path


@pytest.fixture
def tokened() -> Iterator[HttpServer]:
    """The server with a token, with plain callables behind it: what is tested here is the HTTP layer."""
    server = serve(stub_page_app(TOKEN, MAX_UPLOAD))
    yield server
    server.stop()


def test_a_token_is_required_when_set(tokened: HttpServer) -> None:
    def get(path: str, **headers: str) -> Answer:
        return request("127.0.0.1", tokened.port, "GET", path, headers=headers)

    refused = get("/")
    assert refused.status == 401 and "token" in refused.json()["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert get("/", Authorization="Bearer wrong").status == 401
    assert get("/?token=wrong").status == 401
    assert get("/", Cookie=f"imgwatch_token_{tokened.port}=wrong").status == 401
    bearer = f"Bearer {TOKEN}".encode().decode("latin-1")  # http.client sends header values as latin-1
    assert get("/", Authorization=bearer).status == 200
    upload = request(
        "127.0.0.1", tokened.port, "POST", "/api/search", jpeg_bytes(photo(1)), {"Authorization": bearer}
    )
    assert upload.status == 200 and upload.json()["results"][0]["path"] == "/p/a.jpg"
    assert request("127.0.0.1", tokened.port, "POST", "/api/search", b"x" * 10).status == 401

    # A browser gives the token once in the address; it comes back as a cookie, out of the address.
    quoted = "page-token-%C3%A9"
    first = get(f"/?token={quoted}")
    assert first.status == 303 and first.headers["Location"] == "/"
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert get("/", Cookie=cookie.split(";")[0]).status == 200
    assert get("/static/search.js", Cookie="other=1; " + cookie.split(";")[0]).status == 200
    # Named for this port: a browser keeps cookies by host, not port, so two daemons' pages on one
    # host would otherwise overwrite each other's token.
    name, value = cookie.split(";")[0].split("=", 1)
    assert name == f"imgwatch_token_{tokened.port}"
    assert get("/", Cookie=f"imgwatch_token={value}").status == 401


def test_off_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="without a token"):
        SearchPageConfig("0.0.0.0", 0, None, MAX_UPLOAD)  # noqa: S104


def test_the_cli_refuses_a_public_page_without_a_token(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = imgwatch_cli(tmp_path / "data", "watch", str(root), "--search-page", "0.0.0.0:0")
    assert result.returncode == 1 and b"--search-page) without a token" in result.stderr


def test_the_thumbnail_cache_is_bounded_by_bytes() -> None:
    cache = ThumbnailCache(max_bytes=100)
    for n in range(5):
        cache.put((n, None), bytes(40))
    assert cache.size_bytes <= 100
    assert cache.get((4, None)) is not None and cache.get((0, None)) is None
    cache.put((9, None), bytes(101))  # bigger than the whole cache: not kept
    assert cache.get((9, None)) is None


def test_thumbnails_never_leave_the_roots(ctx: Context, tmp_path: Path) -> None:
    """In-process, on a real catalog: what the daemon's roots do not hold is refused, whatever the
    catalog holds (another folder indexed into the same data dir, a directory swapped for a symlink)."""
    root, other, elsewhere = tmp_path / "root", tmp_path / "other", tmp_path / "elsewhere"
    write_photo(root / "album" / "a.jpg", 1)
    write_photo(other / "b.jpg", 2)
    write_photo(elsewhere / "a.jpg", 3)
    index(ctx, root, other)
    thumbnails = Thumbnails(lambda: ctx.catalog, [str(root)], max_file_bytes=10 * 2**20)
    a = ctx.catalog.get(str(root / "album" / "a.jpg"))
    b = ctx.catalog.get(str(other / "b.jpg"))
    assert a is not None and b is not None

    first = thumbnails.by_id(a.id)
    assert thumbnails.by_path(str(root / "album" / "a.jpg")) is first  # from the cache
    with pytest.raises(ThumbnailForbiddenError):
        thumbnails.by_id(b.id)  # indexed, but not under the daemon's roots
    with pytest.raises(ThumbnailForbiddenError):
        thumbnails.by_path(str(other / "b.jpg"))
    with pytest.raises(ThumbnailNotFoundError):
        thumbnails.by_id(b.id + a.id + 100)

    # The album becomes a symlink to a folder outside, with a file of the same name: refused.
    thumbnails.cache = ThumbnailCache()
    shutil.rmtree(root / "album")
    (root / "album").symlink_to(elsewhere)
    with pytest.raises(ThumbnailForbiddenError):
        thumbnails.by_id(a.id)


# ---- the real daemon ----------------------------------------------------------------------------


@dataclass
class Served:
    daemon: RunningDaemon
    port: int
    root: Path
    outside: Path
    token: str
    """The data dir's page token, read from the address `imgwatch status` gives, as a user does."""

    def get(self, path: str, **headers: str) -> Answer:
        return request("127.0.0.1", self.port, "GET", path, headers=self.auth(headers))

    def post(self, path: str, body: bytes, **headers: str) -> Answer:
        return request("127.0.0.1", self.port, "POST", path, body, self.auth(headers))

    def auth(self, headers: dict[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **headers}

    @property
    def url(self) -> str:
        """What `imgwatch status` prints: opening it once gives the browser the token's cookie."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


def resized_copy(seed: int, size: tuple[int, int] = (320, 240), quality: int = 75) -> bytes:
    """A query: photo ``seed`` as ``write_photo`` makes it, smaller and compressed again."""
    return jpeg_bytes(photo(seed, (480, 360)).resize(size, Image.Resampling.LANCZOS), quality=quality)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("page")
    root, outside = base / "photos", base / "outside"
    for seed in range(8):
        write_photo(root / f"photo{seed}.jpg", seed)
    # A grey copy of photo 3: "more like" photo3.jpg finds it first.
    (root / "copies").mkdir()
    (root / "copies" / "photo3-grey.jpg").write_bytes(jpeg_bytes(photo(3, (480, 360)).convert("L")))
    write_photo(root / os.fsdecode(b"odd \xff\xfe name.jpg"), 11)
    write_photo(outside / "secret.jpg", 99)
    # Symlinked files are indexed under the link's path, but this one's file is outside the root.
    (root / "link-out.jpg").symlink_to(outside / "secret.jpg")
    config = base / "config.toml"
    config.write_text(f"search_page_max_bytes = {MAX_UPLOAD}\n")
    port = _free_port()
    daemon = start_daemon(
        base / "data", root, extra=("--search-page", f"127.0.0.1:{port}", "--config", str(config))
    )
    try:
        wait_until(lambda: daemon.status()["vectors"] == 11, timeout=120)
        daemon.idle()
        url = urllib.parse.urlsplit(daemon.status()["search_page"])
        token = urllib.parse.parse_qs(url.query)["token"][0]
        yield Served(daemon, port, root, outside, token)
    finally:
        daemon.process.kill()
        daemon.process.wait()


@pytest.mark.slow
def test_the_page_and_its_files_are_served(served: Served) -> None:
    page = served.get("/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'type="file"' in page.body and b"/static/search.js" in page.body
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    for name, kind in (("search.js", "text/javascript"), ("search.css", "text/css")):
        answer = served.get(f"/static/{name}")
        assert answer.status == 200 and answer.headers["Content-Type"].startswith(kind)
    assert served.get("/static/../search_page.py").status == 404
    assert served.get("/static/search.html").status == 404
    # `imgwatch status` tells where the page is, with the data dir's own token (no webhook token
    # is set): the page is not open to whoever can reach loopback.
    assert served.daemon.status()["search_page"] == served.url
    status = imgwatch_cli(served.daemon.data_dir, "status")
    assert status.returncode == 0 and f"search:     {served.url}".encode() in status.stdout
    token_file = served.daemon.data_dir / TOKEN_FILE
    assert token_file.read_text().strip() == served.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    for route in ("/", "/thumb?id=1", "/api/like?id=1", "/duplicates", "/openapi.json"):
        assert served.get(route, Authorization="").status == 401, route
        assert served.get(route, Authorization="Bearer wrong").status == 401, route
    # The address once: a cookie, and the address without the token (the rest of its query kept).
    first = request("127.0.0.1", served.port, "GET", f"/duplicates?threshold=0.9&token={served.token}")
    assert first.status == 303 and first.headers["Location"] == "/duplicates?threshold=0.9"
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert served.get("/", Authorization="", Cookie=cookie.split(";")[0]).status == 200


@pytest.mark.slow
def test_an_upload_finds_its_photo_and_more_like_this_its_copy(served: Served) -> None:
    answer = served.post("/api/search?k=3", resized_copy(5), **{"Content-Type": "image/jpeg"})
    assert answer.status == 200
    results = answer.json()["results"]
    assert len(results) == 3
    assert results[0]["path"] == str(served.root / "photo5.jpg")
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    photo3 = path_ref(str(served.root / "photo3.jpg"))
    like = served.get(f"/api/like?path={photo3}&k=5")
    assert like.status == 200
    paths = [r["path"] for r in like.json()["results"]]
    assert paths[0] == str(served.root / "copies" / "photo3-grey.jpg")
    assert str(served.root / "photo3.jpg") not in paths  # the query itself is left out

    unknown = served.get(f"/api/like?path={path_ref(str(served.root / 'nope.jpg'))}")
    assert unknown.status == 404 and "not in the index" in unknown.json()["error"]


@pytest.mark.slow
def test_bad_uploads_get_the_right_status(served: Served) -> None:
    assert served.post("/api/search", b"").status == 400
    not_image = served.post("/api/search", b"hello, not an image\n" * 10)
    assert not_image.status == 415 and "not a supported image" in not_image.json()["error"]
    truncated = served.post("/api/search", jpeg_bytes(photo(1))[:2000])
    assert truncated.status == 415
    too_big = _post_headers_only(served, {"Content-Length": str(MAX_UPLOAD + 1)})
    assert too_big.status == 413 and "search_page_max_bytes" in too_big.json()["error"]
    assert _post_headers_only(served, {}).status == 411
    # A chunked upload is read as it comes, and refused the moment it passes the limit.
    assert _chunked_upload(served, resized_copy(5)).status == 200
    over = _chunked_upload(served, b"\xff" * (MAX_UPLOAD + 1))
    assert over.status == 413 and "search_page_max_bytes" in over.json()["error"]
    for k in ("0", "abc", "201", "-1"):
        assert served.post(f"/api/search?k={k}", jpeg_bytes(photo(1))).status == 400
    assert served.post("/api/nothing", b"x").status == 404
    assert request("127.0.0.1", served.port, "PUT", "/api/search", b"x", served.auth({})).status == 405


@pytest.mark.slow
def test_thumbnails_only_of_indexed_files_inside_the_roots(served: Served) -> None:
    root, outside = served.root, served.outside
    good = served.get(f"/thumb?path={path_ref(str(root / 'photo1.jpg'))}")
    assert good.status == 200 and good.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(good.body)) as thumb:
        assert max(thumb.size) == 200
    forbidden = [
        str(outside / "secret.jpg"),  # outside, exists
        f"{root}/../outside/secret.jpg",  # out of the root with ..
        f"{root}/copies/../../outside/secret.jpg",
        str(root / "link-out.jpg"),  # indexed, but a symlink whose file is outside
        "/etc/passwd",
        "relative/photo1.jpg",
    ]
    for path in forbidden:
        answer = served.get(f"/thumb?path={path_ref(path)}")
        assert answer.status == 403, path
        assert answer.headers["Content-Type"] == "application/json" and "error" in answer.json()
    assert served.get(f"/thumb?path={path_ref(str(root / 'missing.jpg'))}").status == 404
    assert served.get(f"/thumb?path={path_ref(str(root / 'copies'))}").status == 404  # a directory
    assert served.get(f"/thumb?path={path_ref(str(root))}%ff%fe.jpg").status == 403  # a sibling of root
    odd = root / os.fsdecode(b"odd \xff\xfe name.jpg")  # not UTF-8: must reach the catalog as these bytes
    assert served.get(f"/thumb?path={path_ref(str(odd))}").status == 200
    assert served.get(f"/thumb?path={path_ref(str(root))}/photo1.jpg%00.png").status == 400
    assert served.get("/thumb?path=").status == 400
    assert served.get("/thumb").status == 400
    assert served.get("/thumb?id=abc").status == 400
    assert served.get("/thumb?id=999999").status == 404
    # By catalog id: ids of files inside the roots work, the symlink's does not.
    ids = _ids_by_path(served)
    assert served.get(f"/thumb?id={ids[str(root / 'photo2.jpg')]}").status == 200
    assert served.get(f"/thumb?id={ids[str(root / 'link-out.jpg')]}").status == 403


def _ids_by_path(served: Served) -> dict[str, int]:
    """Catalog ids, found through the page itself: /api/like?id= answers with an id's path."""
    found: dict[str, int] = {}
    for file_id in range(1, 40):
        answer = served.get(f"/api/like?id={file_id}&k=1")
        if answer.status == 200:
            found[answer.json()["query"]] = file_id
    return found


def _chunked_upload(served: Served, data: bytes, chunk: int = 16 * 1024) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        pieces = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
        connection.request(
            "POST", "/api/search?k=1", body=pieces, headers=served.auth({}), encode_chunked=True
        )
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def _post_headers_only(served: Served, headers: dict[str, str]) -> Answer:
    """A POST of ``headers`` alone: the answer must come before any body is sent (http.client would
    otherwise add ``Content-Length: 0``, and a big body would meet a closed connection)."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        connection.putrequest("POST", "/api/search")
        for name, value in served.auth(headers).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


# ---- the real daemon off loopback: the token, as for the webhook --------------------------------


@pytest.mark.slow
def test_off_loopback_the_daemon_requires_the_token(tmp_path: Path) -> None:
    host = own_address()
    if host is None:
        pytest.skip("no non-loopback address on this machine (the handler-level tests above cover auth)")
    root = tmp_path / "root"
    write_photo(root / "a.jpg", 1)
    config = tmp_path / "config.toml"
    config.write_text(f'webhook_token = "{TOKEN}"\n')
    port = _free_port(host)
    extra = ("--search-page", f"{host}:{port}", "--config", str(config))
    daemon = start_daemon(tmp_path / "data", root, extra=extra)
    try:
        assert request(host, port, "GET", "/").status == 401
        assert request(host, port, "POST", "/api/search", jpeg_bytes(photo(1))).status == 401
        first = request(host, port, "GET", "/?token=page-token-%C3%A9")
        assert first.status == 303
        cookie = first.headers["Set-Cookie"].split(";")[0]
        assert request(host, port, "GET", "/", headers={"Cookie": cookie}).status == 200
        wait_until(lambda: daemon.status()["vectors"] == 1, timeout=60)
        upload = request(host, port, "POST", "/api/search?k=1", jpeg_bytes(photo(1)), {"Cookie": cookie})
        assert upload.status == 200 and upload.json()["results"][0]["path"] == str(root / "a.jpg")
    finally:
        assert daemon.stop() == 0


# ---- a real browser ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_in_a_browser_upload_then_more_like_this(browser: Any, served: Served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def grid() -> list[tuple[str, str]]:
        """(class, path text) of each figure in the grid, in order (read at once: it may be redrawn)."""
        return [
            (css, path)
            for css, path in browser.execute_script(
                "return [...document.querySelectorAll('#grid figure')]"
                ".map(f => [f.className, f.querySelector('.path').textContent]);"
            )
        ]

    def thumbnails_loaded(_driver: Any) -> bool:
        return bool(
            browser.execute_script(
                "const imgs = [...document.querySelectorAll('#grid figure.result img')];"
                "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
            )
        )

    wait = WebDriverWait(browser, BROWSER_TIMEOUT)
    browser.get(served.url)
    query = tmp_path / "query.jpg"
    query.write_bytes(resized_copy(5))
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(lambda _d: any(css == "result" for css, _ in grid()))
    shown = grid()
    assert shown[0] == ("query", "query.jpg")
    assert shown[1] == ("result", str(served.root / "photo5.jpg"))
    assert len(shown) == 1 + 11  # k defaults to 20; eleven files are indexed
    wait.until(thumbnails_loaded)
    browser.save_screenshot(str(tmp_path / "search-page.png"))

    # Click the first result: more like photo5.jpg, by its stored vector.
    browser.find_elements(By.CSS_SELECTOR, "#grid figure.result")[0].click()
    wait.until(lambda _d: browser.find_element(By.ID, "title").text == "More like this")
    shown = grid()
    assert shown[0] == ("query", str(served.root / "photo5.jpg"))
    assert str(served.root / "photo5.jpg") not in [path for css, path in shown if css == "result"]

    # Its first result is a file with a copy in the folder: that copy comes first.
    photo3 = next(
        figure
        for figure in browser.find_elements(By.CSS_SELECTOR, "#grid figure.result")
        if figure.find_element(By.CSS_SELECTOR, ".path").text == str(served.root / "photo3.jpg")
    )
    photo3.click()
    wait.until(lambda _d: grid()[0] == ("query", str(served.root / "photo3.jpg")))
    assert grid()[1] == ("result", str(served.root / "copies" / "photo3-grey.jpg"))
    wait.until(thumbnails_loaded)
    assert not browser.find_element(By.ID, "status").get_attribute("class")  # no error shown

    # An upload over the limit: the browser shows the server's 413 message, not "Failed to fetch".
    big = tmp_path / "huge.jpg"
    big.write_bytes(jpeg_bytes(photo(5)) + b"\0" * (2 * MAX_UPLOAD))
    browser.find_element(By.ID, "file").send_keys(str(big))
    wait.until(lambda _d: browser.find_element(By.ID, "status").get_attribute("class") == "error")
    message = browser.find_element(By.ID, "status").text
    assert "over the limit" in message and "search_page_max_bytes" in message, message


@pytest.mark.slow
def test_a_running_daemon_checks_uploads_and_the_cli_goes_through_it(served: Served, tmp_path: Path) -> None:
    """``POST /api/check`` on the daemon's page port, and ``imgwatch check`` sent to the daemon: a byte
    copy is an exact match found without the model, a look-alike a similar one, an unrelated scene none."""
    copy = (served.root / "photo5.jpg").read_bytes()
    upload = httpx.post(
        f"http://127.0.0.1:{served.port}/api/check",
        headers=served.auth({}),
        files=[
            ("file", ("copy.jpg", copy, "image/jpeg")),
            ("file", ("grey.jpg", resized_copy(2), "image/jpeg")),
        ],
        timeout=120,
    )
    assert upload.status_code == 200, upload.text
    exact, similar = upload.json()["results"]
    assert exact["query"] == "copy.jpg" and exact["match"]["kind"] == "exact"
    assert exact["match"]["path"] == str(served.root / "photo5.jpg") and exact["match"]["score"] == 1.0
    assert similar["match"]["kind"] == "similar" and similar["match"]["path"] == str(
        served.root / "photo2.jpg"
    )

    (tmp_path / "copy.jpg").write_bytes(copy)
    runs = served.daemon.model_runs()
    found = imgwatch_cli(served.daemon.data_dir, "check", str(tmp_path / "copy.jpg"), "--json")
    assert found.returncode == 0, found.stderr
    [line] = [json.loads(text) for text in found.stdout.splitlines()]
    assert line["match"]["kind"] == "exact" and line["match"]["path"] == str(served.root / "photo5.jpg")
    assert served.daemon.model_runs() == runs  # by its hash: the daemon's model did not run
    write_photo(tmp_path / "new.jpg", 4242)
    missing = imgwatch_cli(
        served.daemon.data_dir, "check", str(tmp_path / "new.jpg"), "--threshold", "0.9999"
    )
    assert missing.returncode == 1, missing.stderr
    assert served.daemon.model_runs() == runs + 1  # embedded by the daemon, not by the command


@pytest.mark.slow
def test_a_running_daemon_searches_mirrored_and_filtered(served: Served, tmp_path: Path) -> None:
    """``--flip`` and ``--under`` through the daemon's socket, and ``flip=true`` on its page."""
    query = tmp_path / "q.jpg"
    query.write_bytes(resized_copy(3))
    result = imgwatch_cli(
        served.daemon.data_dir,
        "search",
        str(query),
        "--flip",
        "--under",
        str(served.root / "copies"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(text) for text in result.stdout.splitlines()]
    assert [r["path"] for r in line["results"]] == [str(served.root / "copies" / "photo3-grey.jpg")]
    page = served.post("/api/search?k=3&flip=true", resized_copy(3), **{"Content-Type": "image/jpeg"})
    assert page.status == 200, page.body
    assert json.loads(page.body)["results"][0]["path"] == str(served.root / "photo3.jpg")
