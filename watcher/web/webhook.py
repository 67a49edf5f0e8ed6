"""The webhook surface: ``POST /events`` for machines, ``GET /healthz`` and ``GET /metrics``, and
``POST /api/check`` ("do I already have these?", as on the search page) for upload pipelines.

Auth: ``Authorization: Bearer TOKEN`` when a token is set (it must be, off loopback), and, when an
HMAC secret is set, ``X-Imgwatch-Signature: sha256=<hex HMAC-SHA256 of the body>``; both compared
in constant time, as the bytes the client sent. ``/healthz`` is open (for load balancers and
systemd); ``/metrics`` needs the token off loopback unless ``metrics_public`` says otherwise;
``/api/check`` needs what ``/events`` needs (the token, and the signature when a secret is set).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from imgwatch.check import CheckImages
from imgwatch.errors import ConfigError
from imgwatch.events import ImageEvent
from imgwatch.sources.payloads import GenericBody, S3Body
from imgwatch.sources.webhook import (
    SIGNATURE_HEADER,
    AllowedPaths,
    ForbiddenPathError,
    InvalidEventError,
    MalformedBodyError,
    is_loopback,
    parse_body,
)
from imgwatch.web.check_route import add_check_route
from imgwatch.web.common import (
    JSONAsciiResponse,
    RequestError,
    error_responses,
    header_bytes,
    read_body,
    same_secret,
)


class Accepted(BaseModel):
    """The answer to accepted events."""

    accepted: int = Field(description="Events journalled (a move may make two).")
    ignored: list[str] = Field(description="Paths accepted but not acted on: not image files.")


class Health(BaseModel):
    status: str = Field(description="ok or degraded", examples=["ok"])
    store: str = Field(description="reachable, or why not", examples=["reachable"])
    vectors: int | None = Field(default=None, description="Vectors in the collection.")
    queue: dict[str, int] | None = Field(default=None, description="The daemon's queue depths.")


@dataclass(frozen=True)
class WebhookConfig:
    host: str
    port: int
    token: str | None = field(repr=False)
    hmac_secret: str | None = field(repr=False)
    max_bytes: int
    allowed: AllowedPaths
    metrics_public: bool = False
    """Serve ``/metrics`` without the token even off loopback (a scraper on a trusted network)."""

    def __post_init__(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                "webhook", f"refusing to listen on {self.host} without a token: set IMGWATCH_WEBHOOK_TOKEN"
            )


@dataclass(frozen=True)
class WebhookSurface:
    """What the webhook needs from the daemon."""

    config: WebhookConfig
    submit: Callable[[ImageEvent], None]
    """Journal an event durably and queue it; returns once it is on disk."""
    health: Callable[[], tuple[int, dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]
    check: CheckImages | None = None
    """``POST /api/check``, when set."""


def require_token(surface: WebhookSurface) -> Callable[[Request], None]:
    """A dependency: the bearer token, when one is configured."""
    token = surface.config.token

    def check(request: Request) -> None:
        if token is None:
            return
        if not same_secret(header_bytes(request, "authorization"), f"Bearer {token}".encode()):
            raise RequestError(401, "missing or wrong bearer token")

    return check


def webhook_router(surface: WebhookSurface) -> APIRouter:
    config = surface.config
    router = APIRouter(tags=["webhook"])
    token_required = Depends(require_token(surface))
    signed = require_signature(config)

    @router.post(
        "/events",
        status_code=202,
        dependencies=[token_required],
        summary="Report changes to files",
        description="Each event is written to the daemon's journal before the answer, so an accepted "
        "event survives a crash right after the 202. Paths must lie inside a watched root or an S3 "
        "mount directory. Non-image paths are accepted and listed as `ignored`.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/GenericBody"},
                                {"$ref": "#/components/schemas/S3Body"},
                            ]
                        }
                    }
                },
            }
        },
        responses={
            202: {"description": "Accepted and journalled", "model": Accepted},
            **error_responses(400, 401, 403, 408, 411, 413, 422),
        },
    )
    async def events(request: Request) -> Accepted:
        body = await read_body(request)
        signed(request, body)
        # Paths are checked on disk and events journalled in SQLite: blocking work, off the loop.
        return await anyio.to_thread.run_sync(_accept, surface, body)

    @router.get(
        "/healthz",
        summary="Whether the daemon and its vector store answer",
        responses={
            200: {"description": "The store answers", "model": Health},
            503: {"description": "The store does not answer", "model": Health},
        },
    )
    def healthz() -> JSONAsciiResponse:
        status, body = surface.health()
        return JSONAsciiResponse(body, status_code=status)

    metrics_guard = [] if config.metrics_public or is_loopback(config.host) else [token_required]

    @router.get(
        "/metrics",
        dependencies=metrics_guard,
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
    )
    def metrics() -> Response:
        body, content_type = surface.metrics()
        return Response(body, media_type=content_type)

    if surface.check is not None:
        # An upload pipeline's question reveals what the library holds: the same guard as /events.
        add_check_route(router, surface.check, guards=[token_required], verify=signed)
    return router


def require_signature(config: WebhookConfig) -> Callable[[Request, bytes], None]:
    """A check of a body's bytes: its HMAC signature, when a secret is configured."""
    secret = config.hmac_secret

    def check(request: Request, body: bytes) -> None:
        if secret is None:
            return
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not same_secret(header_bytes(request, SIGNATURE_HEADER), f"sha256={digest}".encode()):
            raise RequestError(401, f"missing or wrong {SIGNATURE_HEADER} (sha256=<hex HMAC of the body>)")

    return check


def _accept(surface: WebhookSurface, body: bytes) -> Accepted:
    try:
        parsed = parse_body(body, surface.config.allowed)
    except MalformedBodyError as e:
        raise RequestError(400, str(e)) from None
    except InvalidEventError as e:
        raise RequestError(422, str(e)) from None
    except ForbiddenPathError as e:
        raise RequestError(403, str(e)) from None
    for event in parsed.events:
        surface.submit(event)
    return Accepted(accepted=len(parsed.events), ignored=parsed.ignored)


#: The two body formats, for the OpenAPI document's components.
BODY_MODELS = (GenericBody, S3Body)
