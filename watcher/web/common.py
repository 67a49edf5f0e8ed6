"""What the HTTP surfaces share: the ``{"error": ...}`` body, limits enforced while reading, secrets.

Every refusal is ``{"error": "<what is wrong>"}`` with the status that says what went wrong; a body
or query that does not fit its model also carries pydantic's error list as ``detail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

#: A client that has sent its headers has this long to send the whole body.
BODY_TIMEOUT_S = 30.0
T = TypeVar("T")


class JSONAsciiResponse(JSONResponse):
    """JSON with ``ensure_ascii``: file names that are not UTF-8 travel as surrogate escapes
    (``"\\udcff"``), which Starlette's UTF-8 rendering cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class ErrorBody(BaseModel):
    """Every refusal."""

    error: str = Field(
        description="What is wrong, for a person to read.", examples=["missing or wrong bearer token"]
    )
    detail: list[dict[str, Any]] | None = Field(
        default=None, description="pydantic's error list, when a body or query did not fit its model."
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these refusals."""
    return {status: {"model": ErrorBody} for status in statuses}


class RequestError(Exception):
    """A request answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers = dict(headers or {})
        super().__init__(message)


def error_response(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    detail: list[dict[str, Any]] | None = None,
) -> JSONAsciiResponse:
    all_headers = {"Cache-Control": "no-store", **(headers or {})}
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="imgwatch"')
    body: dict[str, Any] = {"error": message} | ({"detail": detail} if detail is not None else {})
    return JSONAsciiResponse(body, status_code=status, headers=all_headers)


def install_error_handlers(app: FastAPI) -> None:
    """Our own refusals, routing's 404/405, validation errors and crashes, all as ``{"error": ...}``."""

    async def on_request_error(_request: Request, exc: Exception) -> JSONAsciiResponse:
        assert isinstance(exc, RequestError)
        return error_response(exc.status, str(exc), exc.headers)

    async def on_http_error(request: Request, exc: Exception) -> JSONAsciiResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not used on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, exc.headers)

    async def on_invalid(_request: Request, exc: Exception) -> JSONAsciiResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [_plain(error) for error in exc.errors()]
        # A query parameter that does not fit is a bad request (400, as documented since the first
        # release); a body that does not fit its model is unprocessable (422).
        status = 422 if any(error["loc"][:1] == ["body"] for error in errors) else 400
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return error_response(status, summary, detail=errors)

    async def on_crash(request: Request, _exc: Exception) -> JSONAsciiResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error (logged)")

    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_crash)


def _plain(error: Any) -> dict[str, Any]:
    """A pydantic error as plain JSON (its ``ctx`` may hold exceptions; its ``input`` the whole body)."""
    return {
        "loc": [str(part) if not isinstance(part, int) else part for part in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }


async def read_body(request: Request) -> bytes:
    """The request body, for routes that need its bytes (a signature, an image). Its size is
    :class:`BodyGuard`'s business; this adds the rules for uploads: a length or chunks, in time."""
    if (
        "content-length" not in request.headers
        and "chunked" not in request.headers.get("transfer-encoding", "").lower()
    ):
        raise RequestError(411, "a Content-Length (or a chunked body) is required")
    chunks: list[bytes] = []
    try:
        with anyio.fail_after(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    return b"".join(chunks)


def header_bytes(request: Request, name: str) -> bytes:
    """A header's value as the bytes the client sent (ASGI servers decode headers as latin-1)."""
    return request.headers.get(name, "").encode("latin-1", "replace")


def same_secret(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison, of bytes: ``compare_digest`` refuses non-ASCII str."""
    return hmac.compare_digest(given, expected)


class AnsweredCrashes:
    """A route's crash is answered by the handler for ``Exception`` (one log line, a JSON 500);
    Starlette then raises it again, which would make uvicorn log it a second time and drop the
    connection. Here it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watching(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching)
        except Exception:
            if scope["type"] != "http" or not started:
                raise


class BodyGuard:
    """Bodies over ``limit`` bytes are refused with 413 while they are read, never buffered.

    A declared Content-Length over the limit is answered before a byte of the body is read; a
    chunked body is counted as it arrives and refused the moment it passes the limit.

    After any answer that left a body unread (a 401 before the upload, a 413), uvicorn (h11)
    discards the unread rest, so the next request on a kept-alive connection is read correctly and
    a browser still uploading sees the answer instead of a reset. That draining is bounded: past
    ``drain_limit`` bytes (or for a chunked body of unknown size) the answer says
    ``Connection: close`` and the connection ends with it.
    """

    def __init__(self, app: ASGIApp, limit: int, setting: str) -> None:
        self.app = app
        self.limit = limit
        self.setting = setting
        self.drain_limit = max(4 * limit, 8 << 20)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if declared and b"transfer-encoding" in headers:
            # Both framings at once is how requests are smuggled past a proxy that reads the other
            # one (RFC 9112 6.3): refuse, and end the connection.
            response = error_response(400, "send a Content-Length or a Transfer-Encoding, not both")
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        length = int(declared) if declared.isdigit() else None  # h11 refuses any other form itself
        body_done = length in (None, 0) and not chunked
        too_big_to_drain = chunked or (length or 0) > self.drain_limit
        received = 0

        async def counting_receive() -> Message:
            nonlocal body_done, received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI and read_body() pass an HTTPException from the body through as it is.
                    raise StarletteHTTPException(413, self._over(None))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done and too_big_to_drain:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if length is not None and length > self.limit:
            await error_response(413, self._over(length))(scope, receive, closing_send)
            return
        await self.app(scope, counting_receive, closing_send)

    def _over(self, length: int | None) -> str:
        size = f"a body of {length} bytes" if length is not None else "the body"
        return f"{size} is over the limit of {self.limit} bytes ({self.setting})"


class BlockingWork:
    """Requests' blocking work (an ``index`` of hours, a duplicates pass), each in a daemon thread
    of its own, counted so that shutdown can wait for it within its bound.

    Starlette's worker threads are not daemon threads: one still running would hold the process
    past its 30 s stop bound. These are, and whatever is unfinished when the process exits is in
    the journal and the catalog's ``pending`` rows, like any interrupted work.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not future.done():  # the request may have been cancelled meanwhile
                outcome()

        def work() -> None:
            try:
                result = function(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the request's task
                error = e
                outcome = lambda: future.set_exception(error)  # noqa: E731
            else:
                outcome = lambda: future.set_result(result)  # noqa: E731
            finally:
                with self._lock:
                    self._running.discard(threading.current_thread())
            with contextlib.suppress(RuntimeError):  # the server stopped meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, outcome)

        thread = threading.Thread(target=work, name=self._name, daemon=True)
        with self._lock:
            self._running.add(thread)
        thread.start()
        return await future

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the running work; returns how much is still running."""
        deadline = time.monotonic() + timeout
        with self._lock:
            running = list(self._running)
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in running)


def same_site(request: Request) -> None:
    """Refuse a request that a page on another site made a browser send (its ``Origin`` or
    ``Sec-Fetch-Site`` says so): on loopback without a token, nothing else tells the two apart."""
    origin = request.headers.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get("host", ""):
        raise RequestError(403, f"a request from another site ({origin}) is not served here")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise RequestError(403, "a request from another site is not served here")


def path_ref(path: str) -> str:
    """``path``'s exact bytes, percent-encoded: ASCII a browser passes back unchanged."""
    return urllib.parse.quote(os.fsencode(path), safe="/")


def path_from_ref(ref: str) -> str:
    """The inverse of :func:`path_ref` (a path in ``os.fsdecode`` form)."""
    raw = urllib.parse.unquote_to_bytes(ref)
    if not raw or b"\0" in raw:
        raise RequestError(400, "path must be a non-empty percent-encoded path without NUL bytes")
    return os.fsdecode(raw)
