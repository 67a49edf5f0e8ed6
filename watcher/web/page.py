"""The search page surface: a page for people, its API and thumbnails of indexed files.

Not an event source: it answers searches with the daemon's warm model. Routes:

- ``GET /`` and ``GET /static/search.{css,js}``: the page, plain files from ``imgwatch/static/``;
- ``POST /api/search?k=N[&flip=true][&crops=true]``: the body is an encoded image; its ``k`` most
  similar indexed files (with ``flip``, each scored by the better of the image and its mirror image;
  with ``crops``, by the best of the image and its centre and four corners at 80 %);
- ``GET /api/like?path=REF&k=N`` (or ``id=ID``): "more like this" by the stored vector;
- ``GET /thumb?path=REF`` (or ``id=ID``): a JPEG thumbnail of an indexed file inside the roots;
- ``POST /api/check?threshold=T``: multipart image uploads; for each, its best indexed match or
  none ("do I already have this?"). The webhook port serves it too, behind the webhook's auth.
- ``GET /duplicates`` and ``/api/duplicates...``: the Duplicates view (:mod:`imgwatch.web.review`).

``REF`` is the path's bytes percent-encoded (what the API returns as ``ref``), so names that are
not UTF-8 survive the round trip through the browser.

Auth: a token, as ``Authorization: Bearer TOKEN`` or, for browsers, ``/?token=TOKEN`` once: the page
keeps it in an HttpOnly, SameSite=Strict cookie. The daemon always gives one: the webhook token, or
on loopback without it the data dir's own (:mod:`imgwatch.web.page_token`), since the page can move
files to the trash. A config without a token (in-process, tests) is served on loopback only, and
the Host header must then be an IP address or ``localhost``, so a DNS-rebinding web page cannot read
the answers.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgwatch.check import CheckImages
from imgwatch.errors import ConfigError
from imgwatch.report import display_path
from imgwatch.search import QueryResult
from imgwatch.sources.webhook import is_loopback
from imgwatch.thumbnails import ThumbnailForbiddenError, ThumbnailNotFoundError, ThumbnailUnavailableError
from imgwatch.web.check_route import add_check_route
from imgwatch.web.common import (
    RequestError,
    error_responses,
    header_bytes,
    path_from_ref,
    path_ref,
    read_body,
    same_secret,
    same_site,
)
from imgwatch.web.review import ReviewBackend, review_router

DEFAULT_K = 20
MAX_K = 200
COOKIE_NAME = "imgwatch_token"
"""The cookie's name is this and the server's port (``imgwatch_token_8766``): a browser keeps cookies
by host, not by port, so two daemons' pages on one host would otherwise overwrite each other's."""
#: The page's files, by URL path: a fixed table, so no request path ever reaches the filesystem.
STATIC_FILES = {
    "/": ("search.html", "text/html; charset=utf-8"),
    "/static/search.css": ("search.css", "text/css; charset=utf-8"),
    "/static/search.js": ("search.js", "text/javascript; charset=utf-8"),
    "/duplicates": ("duplicates.html", "text/html; charset=utf-8"),
    "/static/duplicates.css": ("duplicates.css", "text/css; charset=utf-8"),
    "/static/duplicates.js": ("duplicates.js", "text/javascript; charset=utf-8"),
}
#: The pages, as opposed to their scripts and styles (in the OpenAPI document).
PAGES = ("/", "/duplicates")
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
    token: str | None = field(repr=False)
    """Required from callers when set; must be set unless ``host`` is loopback."""
    max_upload_bytes: int

    def __post_init__(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                "search_page",
                f"refusing to serve the search page on {self.host} without a token: "
                "set IMGWATCH_WEBHOOK_TOKEN",
            )


@dataclass(frozen=True)
class SearchPageBackend:
    """What the page needs from the daemon."""

    search_image: SearchImage
    search_like: SearchLike
    thumbnail: Thumbnail
    path_of: PathOf
    check: CheckImages | None = None
    """``POST /api/check``, when set."""
    search_image_flipped: SearchImage | None = None
    """:attr:`search_image` scoring each file by the better of the image and its mirror image; None
    where the daemon does not offer it (the page then refuses ``flip``)."""
    search_image_cropped: Callable[[bytes, int, bool], QueryResult] | None = None
    """``(data, k, flip)``: :attr:`search_image` scoring each file by the best of the image and its
    centre and four corners at 80 % (with ``flip``, and the mirror image of each); None where the
    daemon does not offer it (the page then refuses ``crops``)."""
    review: ReviewBackend | None = None
    """The Duplicates view's routes, when set."""


@dataclass(frozen=True)
class PageSurface:
    config: SearchPageConfig
    backend: SearchPageBackend


class Result(BaseModel):
    path: str = Field(description="The indexed file (undecodable bytes as surrogate escapes).")
    ref: str = Field(description="The path's bytes, percent-encoded: give it back as `path=REF`.")
    score: float = Field(description="Cosine similarity to the query, -1..1.")
    thumb: str = Field(description="The thumbnail's URL on this server.")


class Results(BaseModel):
    query: str
    results: list[Result] = Field(description="Best first.")


def _raw_query(request: Request, name: str) -> str | None:
    """A query parameter still percent-encoded: Starlette decodes values as UTF-8 and would replace
    the bytes of a file name that is not UTF-8; :func:`path_from_ref` decodes them as bytes."""
    found = None
    for pair in request.scope["query_string"].decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if urllib.parse.unquote(key) == name:
            found = value
    return found


def page_access(config: SearchPageConfig) -> Callable[[Request], None]:
    """A dependency for every route of the page: the token, or on loopback the Host check."""
    token = config.token

    def check(request: Request) -> None:
        if token is None:
            if not _local_host(request.headers.get("host", "")):
                # Loopback without a token: refuse names other than localhost, which is what a
                # DNS-rebinding page would send, so that it cannot read results or thumbnails.
                raise RequestError(403, "the Host header must be an IP address or localhost")
            return
        expected = token.encode()
        header = header_bytes(request, "authorization")
        if header.startswith(b"Bearer ") and same_secret(header.removeprefix(b"Bearer "), expected):
            return
        # The cookie and the query string are percent-encoded UTF-8.
        name = cookie_name(request)
        cookie = urllib.parse.unquote(request.cookies.get(name, ""))
        if same_secret(cookie.encode("utf-8", "replace"), expected):
            return
        given = urllib.parse.unquote_to_bytes(_raw_query(request, "token") or "")
        if given and same_secret(given, expected):
            # The browser keeps it from now on; HttpOnly keeps it from scripts, Strict from other sites.
            request.state.set_cookie = (
                f"{name}={urllib.parse.quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
            )
            return
        raise RequestError(
            401, "missing or wrong token: send Authorization: Bearer TOKEN, or open /?token=TOKEN once"
        )

    return check


def cookie_name(request: Request) -> str:
    server = request.scope.get("server")
    return f"{COOKIE_NAME}_{server[1]}" if server and server[1] else COOKIE_NAME


class PageHeaders:
    """The page's security headers on every answer, and the token's cookie once it was given."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    # The token may be in the address (?token=): never send it to another site.
                    (b"referrer-policy", b"no-referrer"),
                ]
                cookie = scope.get("state", {}).get("set_cookie")
                if cookie:
                    headers.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


K = Annotated[int, Query(ge=1, le=MAX_K, description="How many results.")]
PATH_REF = Annotated[
    str | None, Query(alias="path", description="An indexed file: its path's bytes, percent-encoded.")
]
FLIP = Annotated[bool, Query(description="Score each file by the better of the image and its mirror image.")]
CROPS = Annotated[
    bool,
    Query(
        description="Score each file by the best of the image and its centre and four corners at 80 % "
        "(6 model runs instead of 1, 12 with flip)."
    ),
]
FILE_ID = Annotated[int | None, Query(alias="id", ge=1, le=10**18, description="An indexed file's id.")]


def page_router(surface: PageSurface) -> APIRouter:
    config, backend = surface.config, surface.backend
    router = APIRouter(tags=["search page"], dependencies=[Depends(page_access(config))])
    files = {
        url: (resources.files("imgwatch").joinpath("static", name).read_bytes(), kind)
        for url, (name, kind) in STATIC_FILES.items()
    }

    def static(request: Request) -> Response:
        if "token" in request.query_params:
            # Drop the token from the address bar and history; the cookie carries it from now on.
            # The rest of the query stays (the Duplicates view reads ?threshold= and ?exact=).
            kept = [
                pair
                for pair in request.scope["query_string"].decode("latin-1").split("&")
                if pair and urllib.parse.unquote(pair.partition("=")[0]) != "token"
            ]
            return RedirectResponse(
                request.url.path + ("?" + "&".join(kept) if kept else ""), status_code=303
            )
        body, content_type = files[request.url.path]
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-cache"})

    for url in STATIC_FILES:
        router.add_api_route(url, static, methods=["GET"], include_in_schema=url in PAGES, summary="A page")

    def indexed_path(request: Request, file_id: int | None) -> str:
        if file_id is not None:
            path = backend.path_of(file_id)
            if path is None:
                raise RequestError(404, f"id {file_id} is not an indexed file")
            return path
        ref = _raw_query(request, "path")
        if ref is None:
            raise RequestError(400, "give path=REF or id=ID")
        return path_from_ref(ref)

    @router.post(
        "/api/search",
        summary="Search with an uploaded image",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The image file's bytes (JPEG, PNG, WebP, GIF, BMP, TIFF).",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        responses=error_responses(400, 401, 403, 408, 411, 413, 415),
        # Only reads, but runs the model: another site's form must not make a visitor's browser do it.
        dependencies=[Depends(same_site)],
    )
    async def search(request: Request, k: K = DEFAULT_K, flip: FLIP = False, crops: CROPS = False) -> Results:
        searcher = backend.search_image_flipped if flip else backend.search_image
        if crops:
            cropped = backend.search_image_cropped
            searcher = None if cropped is None else lambda image, n: cropped(image, n, flip)
        if searcher is None:
            raise RequestError(
                400, f"this daemon does not search with {'crops' if crops else 'mirror images'}"
            )
        data = await read_body(request)
        if not data:
            raise RequestError(400, "the body is empty: send the image's bytes")
        result = await anyio.to_thread.run_sync(searcher, data, k)
        if result.error:
            raise RequestError(415, f"not an image that can be searched with: {result.error}")
        return _results(result, "the uploaded image")

    @router.get(
        "/api/like", summary="More like an indexed file", responses=error_responses(400, 401, 403, 404)
    )
    def like(request: Request, k: K = DEFAULT_K, path: PATH_REF = None, file_id: FILE_ID = None) -> Results:
        target = indexed_path(request, file_id)
        result = backend.search_like(target, k)
        if result.error:
            raise RequestError(404, f"{display_path(target)}: {result.error}")
        return _results(result, display_path(target))

    @router.get(
        "/thumb",
        summary="A JPEG thumbnail of an indexed file inside the roots",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **error_responses(400, 401, 403, 404)},
    )
    def thumb(request: Request, path: PATH_REF = None, file_id: FILE_ID = None) -> Response:
        ref: int | str = file_id if file_id is not None else indexed_path(request, None)
        try:
            jpeg = backend.thumbnail(ref)
        except ThumbnailForbiddenError as e:
            raise RequestError(403, str(e)) from None
        except (ThumbnailNotFoundError, ThumbnailUnavailableError) as e:
            raise RequestError(404, str(e)) from None
        # Short-lived: the URL names a file, whose content may change.
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    if backend.check is not None:
        add_check_route(router, backend.check, guards=[Depends(same_site)])
    if backend.review is not None:
        # Included here, so that the router's access rule covers these routes too.
        router.include_router(review_router(backend.review))
    return router


#: The body of ``POST /api/check``, for the OpenAPI document (the route parses it itself, after the
#: size and time limits of :func:`read_body`, and after the webhook's signature check of its bytes).
def _results(result: QueryResult, query: str) -> Results:
    return Results(
        query=query,
        results=[
            Result(
                path=display_path(m.path),
                ref=path_ref(m.path),
                score=m.score,
                thumb="/thumb?path=" + path_ref(m.path),
            )
            for m in result.matches
        ],
    )


def _local_host(host_header: str) -> bool:
    host = urllib.parse.urlsplit("//" + host_header).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
