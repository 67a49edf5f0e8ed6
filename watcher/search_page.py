"""The daemon's local search page: a small HTTP server for people, beside the webhook for machines.

Not an event source (it produces no events; ``watcher/sources/`` holds those): it answers searches
with the daemon's warm model and shows thumbnails. The daemon hands it three callables and starts
and stops it; everything HTTP lives here.

Routes (errors are JSON ``{"error": "..."}`` with the status that says what went wrong):

- ``GET /`` and ``GET /static/search.{css,js}``: the page, plain files from ``watcher/static/``;
- ``POST /api/search?k=N``: the body is an encoded image; its ``k`` most similar indexed files;
- ``GET /api/like?path=REF&k=N`` (or ``id=ID``): "more like this" by the stored vector;
- ``GET /thumb?path=REF`` (or ``id=ID``): a JPEG thumbnail of an indexed file inside the roots.

``REF`` is the path's bytes percent-encoded (what the API returns as ``ref``), so names that are
not UTF-8 survive the round trip through the browser.

Auth follows the webhook's rule: on loopback no token is needed (and the Host header must then be
an IP address or ``localhost``, so a DNS-rebinding web page cannot read the answers); bound
elsewhere, the webhook token is required, as ``Authorization: Bearer TOKEN`` or, for browsers,
``/?token=TOKEN`` once: the page keeps it in an HttpOnly, SameSite=Strict cookie.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from imgwatch.errors import ConfigError
from imgwatch.report import display_path
from imgwatch.search import QueryResult
from imgwatch.sources.webhook import is_loopback
from imgwatch.thumbnails import ThumbnailForbiddenError, ThumbnailNotFoundError, ThumbnailUnavailableError

log = logging.getLogger(__name__)

DEFAULT_K = 20
MAX_K = 200
COOKIE_NAME = "imgwatch_token"
#: The page's files, by URL path: a fixed table, so no request path ever reaches the filesystem.
STATIC_FILES = {
    "/": ("search.html", "text/html; charset=utf-8"),
    "/static/search.css": ("search.css", "text/css; charset=utf-8"),
    "/static/search.js": ("search.js", "text/javascript; charset=utf-8"),
}
#: The page loads nothing from elsewhere; query previews are blob: URLs of the chosen file.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: Embed ``data`` (an encoded image) and search: ``(data, k) -> result`` (``error`` set if no image).
SearchImage = Callable[[bytes, int], QueryResult]
#: Search by an indexed file's stored vector: ``(path, k) -> result``.
SearchLike = Callable[[str, int], QueryResult]
#: A thumbnail by catalog id (int) or absolute path (str); raises the ``Thumbnail*Error`` exceptions.
Thumbnail = Callable[[int | str], bytes]
#: An indexed file's path by catalog id, or None.
PathOf = Callable[[int], str | None]


@dataclass(frozen=True)
class SearchPageConfig:
    host: str
    port: int
    token: str | None
    """Required from callers when set; must be set unless ``host`` is loopback."""
    max_upload_bytes: int


@dataclass(frozen=True)
class SearchPageBackend:
    """What the page needs from the daemon."""

    search_image: SearchImage
    search_like: SearchLike
    thumbnail: Thumbnail
    path_of: PathOf


class RequestError(Exception):
    """A request answered with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def path_ref(path: str) -> str:
    """``path``'s exact bytes, percent-encoded: ASCII a browser passes back unchanged."""
    return urllib.parse.quote(os.fsencode(path), safe="/")


def path_from_ref(ref: str) -> str:
    """The inverse of :func:`path_ref` (a path in ``os.fsdecode`` form)."""
    raw = urllib.parse.unquote_to_bytes(ref)
    if not raw or b"\0" in raw:
        raise RequestError(400, "path must be a non-empty percent-encoded path without NUL bytes")
    return os.fsdecode(raw)


def _static(name: str) -> bytes:
    return resources.files("imgwatch").joinpath("static", name).read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    config: SearchPageConfig
    backend: SearchPageBackend
    files: dict[str, tuple[bytes, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops sending mid-upload does not hold a thread forever
    _set_cookie: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("search page %s: " + format, self.client_address[0], *args)

    # ---- dispatch ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_PUT(self) -> None:
        self.close_connection = True
        self._json(405, {"error": f"{self.command} is not used here"})

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _handle(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        url = urllib.parse.urlsplit(self.path)
        self._set_cookie = None
        try:
            query = _query(url.query)
            self._authorise(query)
            route(url.path, query)
        except RequestError as e:
            self._json(e.status, {"error": str(e)})
        except Exception:
            log.exception("search page request failed")
            self._json(500, {"error": "internal error (logged)"})

    def _authorise(self, query: dict[str, list[str]]) -> None:
        token = self.server.config.token
        if token is None:
            if not _local_host(self.headers.get("Host", "")):
                # Loopback without a token: refuse names other than localhost, which is what a
                # DNS-rebinding page would send, so that it cannot read results or thumbnails.
                raise RequestError(403, "the Host header must be an IP address or localhost")
            return
        expected = token.encode()
        # http.server decodes header lines as latin-1: encoding them back gives the bytes sent.
        header = self.headers.get("Authorization", "").encode("latin-1", "replace")
        if header.startswith(b"Bearer ") and _same(header.removeprefix(b"Bearer "), expected):
            return
        # The cookie and the query string are percent-encoded UTF-8.
        if _same(_cookie(self.headers.get("Cookie", ""), COOKIE_NAME).encode("utf-8", "replace"), expected):
            return
        given = urllib.parse.unquote_to_bytes(query.get("token", [""])[-1])
        if given and _same(given, expected):
            # The browser keeps it from now on; HttpOnly keeps it from scripts, Strict from other sites.
            self._set_cookie = (
                f"{COOKIE_NAME}={urllib.parse.quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
            )
            return
        self.close_connection = True  # a body, if any, is not read
        raise RequestError(
            401, "missing or wrong token: send Authorization: Bearer TOKEN, or open /?token=TOKEN once"
        )

    # ---- routes --------------------------------------------------------------------------------

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        if path in self.server.files:
            if "token" in query:
                # Drop the token from the address bar and history; the cookie carries it from now on.
                self._send(303, b"", "text/plain", {"Location": "/"})
                return
            body, content_type = self.server.files[path]
            self._send(200, body, content_type, {"Cache-Control": "no-cache"})
        elif path == "/api/like":
            k = _k(query)
            like = self._indexed_path(query)
            result = self.server.backend.search_like(like, k)
            if result.error:
                raise RequestError(404, f"{display_path(like)}: {result.error}")
            self._results(result, display_path(like))
        elif path == "/thumb":
            self._thumbnail(query)
        else:
            raise RequestError(404, f"no such page: GET {path}")

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        if path != "/api/search":
            self.close_connection = True
            raise RequestError(404, f"no such endpoint: POST {path}")
        k = _k(query)
        data = self._body()
        result = self.server.backend.search_image(data, k)
        if result.error:
            raise RequestError(415, f"not an image that can be searched with: {result.error}")
        self._results(result, "the uploaded image")

    def _body(self) -> bytes:
        # Until the body is read, the connection cannot carry another request.
        self.close_connection = True
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "send a Content-Length (chunked bodies are not accepted)")
        length_header = (self.headers.get("Content-Length") or "").strip()
        if not (length_header.isascii() and length_header.isdigit() and len(length_header) <= 12):
            raise RequestError(411, "a Content-Length (decimal digits) is required")
        length = int(length_header)
        limit = self.server.config.max_upload_bytes
        if length > limit:
            raise RequestError(
                413, f"image of {length} bytes is over the limit of {limit} (search_page_max_bytes)"
            )
        if length == 0:
            raise RequestError(400, "the body is empty: send the image's bytes")
        data = self.rfile.read(length)
        if len(data) != length:
            raise RequestError(400, "the body ended before Content-Length bytes")
        self.close_connection = False
        return data

    def _indexed_path(self, query: dict[str, list[str]]) -> str:
        if "id" in query:
            path = self.server.backend.path_of(_id(query))
            if path is None:
                raise RequestError(404, f"id {_id(query)} is not an indexed file")
            return path
        if "path" not in query:
            raise RequestError(400, "give path=REF or id=ID")
        return path_from_ref(query["path"][-1])

    def _thumbnail(self, query: dict[str, list[str]]) -> None:
        ref: int | str = _id(query) if "id" in query else ""
        if not ref:
            if "path" not in query:
                raise RequestError(400, "give path=REF or id=ID")
            ref = path_from_ref(query["path"][-1])
        try:
            jpeg = self.server.backend.thumbnail(ref)
        except ThumbnailForbiddenError as e:
            raise RequestError(403, str(e)) from None
        except (ThumbnailNotFoundError, ThumbnailUnavailableError) as e:
            raise RequestError(404, str(e)) from None
        # Short-lived: the URL names a file, whose content may change.
        self._send(200, jpeg, "image/jpeg", {"Cache-Control": "private, max-age=60"})

    def _results(self, result: QueryResult, query: str) -> None:
        self._json(
            200,
            {
                "query": query,
                "results": [
                    {
                        "path": display_path(m.path),
                        "ref": path_ref(m.path),
                        "score": m.score,
                        "thumb": "/thumb?path=" + path_ref(m.path),
                    }
                    for m in result.matches
                ],
            },
        )

    # ---- answers -------------------------------------------------------------------------------

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", {"Cache-Control": "no-store"})

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        # The token may be in the address (?token=): never send it to another site.
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self._set_cookie is not None:
            self.send_header("Set-Cookie", self._set_cookie)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="imgwatch"')
        self.end_headers()
        self.wfile.write(body)


def _same(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison (of bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given, expected)


def _cookie(header: str, name: str) -> str:
    """The value of cookie ``name`` in a Cookie header ('' if absent), percent-decoded."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return urllib.parse.unquote(value)
    return ""


def _local_host(host_header: str) -> bool:
    host = urllib.parse.urlsplit("//" + host_header).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _query(text: str) -> dict[str, list[str]]:
    """The query string's values, still percent-encoded: ``parse_qs`` would decode them as UTF-8 and
    replace the bytes of a file name that is not UTF-8; each parameter is decoded by its reader."""
    fields = [field for field in text.split("&") if field]
    if len(fields) > 20:
        raise RequestError(400, "too many query parameters")
    query: dict[str, list[str]] = {}
    for field in fields:
        name, _, value = field.partition("=")
        query.setdefault(urllib.parse.unquote(name), []).append(value)
    return query


def _k(query: dict[str, list[str]]) -> int:
    raw = urllib.parse.unquote(query.get("k", [str(DEFAULT_K)])[-1])
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_K):
        raise RequestError(400, f"k must be a whole number from 1 to {MAX_K}, not {raw!r}")
    return int(raw)


def _id(query: dict[str, list[str]]) -> int:
    raw = urllib.parse.unquote(query["id"][-1])
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise RequestError(400, f"id must be a catalog id (a whole number), not {raw!r}")
    return int(raw)


class SearchPageServer:
    """The search page, served from a background thread."""

    def __init__(self, config: SearchPageConfig, backend: SearchPageBackend) -> None:
        if config.token is None and not is_loopback(config.host):
            raise ConfigError(
                "search_page",
                f"refusing to serve the search page on {config.host} without a token: "
                "set IMGWATCH_WEBHOOK_TOKEN",
            )
        family = {"address_family": socket.AF_INET6} if ":" in config.host else {}
        server_class = type("_BoundServer", (_Server,), family)
        self._server = server_class((config.host, config.port), _Handler)
        self._server.config = config
        self._server.backend = backend
        self._server.files = {url: (_static(name), kind) for url, (name, kind) in STATIC_FILES.items()}
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="imgwatch-search-page", kwargs={"poll_interval": 0.2}
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()
        auth = "token required" if self._server.config.token else "no token (loopback)"
        log.info("search page on %s (%s)", self.url, auth)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
