"""The one application factory: the services each surface needs in, a FastAPI app out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from imgwatch import __version__
from imgwatch.web.common import BodyGuard, JSONAsciiResponse, install_error_handlers
from imgwatch.web.local import MAX_REQUEST_BYTES, LocalSurface, local_router
from imgwatch.web.page import PageHeaders, PageSurface, page_access, page_router
from imgwatch.web.webhook import BODY_MODELS, WebhookSurface, require_token, webhook_router

#: ``(method, status)`` of every answer, for the metrics.
OnRequest = Callable[[str, int], None]


def create_app(
    *,
    webhook: WebhookSurface | None = None,
    page: PageSurface | None = None,
    local: LocalSurface | None = None,
    on_request: OnRequest | None = None,
) -> ASGIApp:
    """An app serving the given surfaces, one router each; ``GET /openapi.json`` describes them,
    behind the same checks as the rest of the port (the webhook's token, the page's access rule)."""
    app = FastAPI(
        title="imgwatch",
        version=__version__,
        description="Reverse image search over your folders. The daemon's HTTP surfaces: see README.",
        # Our own /openapi.json, behind the port's checks; no Swagger UI (it loads scripts from a CDN).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        default_response_class=JSONAsciiResponse,
    )
    install_error_handlers(app)
    guards: list[Any] = []
    limits: list[tuple[int, str]] = []
    if webhook is not None:
        app.include_router(webhook_router(webhook))
        guards.append(Depends(require_token(webhook)))
        limits.append((webhook.config.max_bytes, "webhook_max_bytes"))
    if page is not None:
        app.include_router(page_router(page))
        guards.append(Depends(page_access(page.config)))
        limits.append((page.config.max_upload_bytes, "search_page_max_bytes"))
    if local is not None:
        app.include_router(local_router(local))
        limits.append((MAX_REQUEST_BYTES, "the control socket's limit"))

    def openapi() -> JSONAsciiResponse:
        return JSONAsciiResponse(_openapi(app, with_webhook=webhook is not None))

    app.add_api_route("/openapi.json", openapi, methods=["GET"], dependencies=guards, include_in_schema=False)
    limit, setting = min(limits, default=(MAX_REQUEST_BYTES, "the limit"))
    wrapped: ASGIApp = BodyGuard(app, limit, setting)
    if page is not None:
        wrapped = PageHeaders(wrapped)
    if on_request is not None:
        wrapped = _Counted(wrapped, on_request)
    return wrapped


def _openapi(app: FastAPI, *, with_webhook: bool) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = app.openapi()
        if with_webhook:
            # The webhook reads its body itself (its HMAC covers the raw bytes), so FastAPI does not
            # see the two formats: add their schemas for the request body's oneOf.
            _, definitions = models_json_schema(
                [(model, "validation") for model in BODY_MODELS], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema


class _Counted:
    """Reports each answer's method and status (the webhook's request counter)."""

    def __init__(self, app: ASGIApp, on_request: OnRequest) -> None:
        self.app = app
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.on_request(scope["method"], int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting)


__all__ = ["Request", "create_app"]
