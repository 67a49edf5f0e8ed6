"""The one application factory: the services each surface needs in, a FastAPI app out."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from imgwatch import __version__
from imgwatch.sources.webhook import SIGNATURE_HEADER
from imgwatch.web.common import (
    AnsweredCrashes,
    BodyGuard,
    ErrorBody,
    JSONAsciiResponse,
    install_error_handlers,
)
from imgwatch.web.local import MAX_REQUEST_BYTES, LocalSurface, local_router
from imgwatch.web.page import COOKIE_NAME, PageHeaders, PageSurface, page_access, page_router
from imgwatch.web.webhook import BODY_MODELS, WebhookSurface, require_token, webhook_router

#: ``(method, status)`` of every answer, for the metrics.
OnRequest = Callable[[str, int], None]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


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
        return JSONAsciiResponse(_openapi(app, with_webhook=webhook is not None, with_page=page is not None))

    app.add_api_route("/openapi.json", openapi, methods=["GET"], dependencies=guards, include_in_schema=False)
    limit, setting = min(limits, default=(MAX_REQUEST_BYTES, "the limit"))
    wrapped: ASGIApp = BodyGuard(AnsweredCrashes(app), limit, setting)
    if page is not None:
        wrapped = PageHeaders(wrapped)
    if on_request is not None:
        wrapped = _Counted(wrapped, on_request)
    return wrapped


def _openapi(app: FastAPI, *, with_webhook: bool, with_page: bool) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = app.openapi()
        components = schema.setdefault("components", {})
        if with_webhook:
            # The webhook reads its body itself (its HMAC covers the raw bytes), so FastAPI does not
            # see the two formats: add their schemas for the request body's oneOf.
            _, definitions = models_json_schema(
                [(model, "validation") for model in BODY_MODELS], ref_template="#/components/schemas/{model}"
            )
            components.setdefault("schemas", {}).update(definitions["$defs"])
        _our_error_shapes(schema)
        _security(schema, with_webhook=with_webhook, with_page=with_page)
        app.openapi_schema = schema
    return app.openapi_schema


def _our_error_shapes(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 ``{"detail": ...}``; ours are ``{"error", "detail"}``, and a
    query parameter that does not fit is a 400 (``install_error_handlers``)."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" not in responses:
                continue
            has_json_body = "application/json" in operation.get("requestBody", {}).get("content", {})
            if has_json_body:
                responses["422"] = {"description": "The body does not fit its model", **error}
            else:
                del responses["422"]
            if operation.get("parameters"):
                responses.setdefault("400", {"description": "A parameter does not fit", **error})
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in json.dumps(schema.get("paths", {})):
            del schemas[unused]
    if "ErrorBody" not in schemas:
        schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")


def _security(schema: dict[str, Any], *, with_webhook: bool, with_page: bool) -> None:
    """The token (and the webhook's signature) as OpenAPI security schemes. Required on loopback
    only when a token is set, so they are declared as accepted, not demanded of every request."""
    schemes: dict[str, Any] = {}
    if with_webhook or with_page:
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The webhook token (IMGWATCH_WEBHOOK_TOKEN), when one is set; "
            "required off loopback.",
        }
    if with_page:
        schemes["cookie"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": f"{COOKIE_NAME}_PORT",
            "description": "Set by opening /?token=TOKEN once in a browser; PORT is the server's port.",
        }
    if with_webhook:
        schemes["signature"] = {
            "type": "apiKey",
            "in": "header",
            "name": SIGNATURE_HEADER,
            "description": "sha256=<hex HMAC-SHA256 of the body>, required on POST /events when an HMAC "
            "secret (IMGWATCH_WEBHOOK_HMAC_SECRET) is set.",
        }
    if not schemes:
        return
    schema.setdefault("components", {})["securitySchemes"] = schemes
    # Either the bearer token (with the signature where one is set), the cookie, or nothing on
    # loopback without a token: the empty requirement says the last.
    requirement: list[dict[str, list[str]]] = []
    if with_webhook:
        requirement.append({"bearer": [], "signature": []})
    requirement.append({"bearer": []})
    if with_page:
        requirement.append({"cookie": []})
    schema["security"] = [*requirement, {}]


class _Counted:
    """Reports each answer's method and status (the webhook's request counter)."""

    def __init__(self, app: ASGIApp, on_request: OnRequest) -> None:
        self.app = app
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # Any token is a method to h11: count the ones HTTP defines, so that a client cannot make
        # a metric series per made-up method.
        method = scope["method"] if scope["method"] in _METHODS else "other"

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.on_request(method, int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting)
