"""``POST /api/check`` ("do I already have these images?"): multipart uploads in, each upload's best
indexed match at or above a threshold out. Served on the search page port and, behind its auth, on
the webhook port."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.types import Message

from imgwatch.check import DEFAULT_THRESHOLD, CheckImages, CheckMatch, MatchKind
from imgwatch.report import display_path
from imgwatch.web.common import RequestError, error_responses, path_ref, read_body

#: A check of the raw body before it is parsed (the webhook's HMAC signature); raises RequestError.
BodyCheck = Callable[[Request, bytes], None]


class CheckedMatch(BaseModel):
    path: str = Field(description="The indexed file, as the page shows paths (undecodable bytes as \\xNN).")
    ref: str = Field(description="The path's bytes, percent-encoded.")
    score: float = Field(description="Cosine similarity to the upload; 1.0 for an exact match.")
    kind: MatchKind = Field(
        description="exact: the indexed file has the upload's bytes; similar: a close enough vector."
    )


class Checked(BaseModel):
    query: str = Field(description="The upload's file name.")
    match: CheckedMatch | None = Field(description="The best match at or above the threshold, or null.")


class CheckAnswer(BaseModel):
    results: list[Checked] = Field(description="One per uploaded file, in the order they came.")


CHECK_BODY = {
    "required": True,
    "description": "Image files as multipart/form-data file parts (`curl -F file=@IMG`), named by file name.",
    "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}},
}  # fmt: skip


def add_check_route(
    router: APIRouter, check: CheckImages, *, guards: Sequence[Any] = (), verify: BodyCheck | None = None
) -> None:
    """``POST /api/check`` on ``router``, behind ``guards`` (and ``verify`` of the raw body)."""

    @router.post(
        "/api/check",
        summary="Do I already have these images? Each upload's best indexed match at or above the threshold",
        description="An upload whose bytes an indexed file has is an exact match, found without the model.",
        dependencies=list(guards),
        openapi_extra={"requestBody": CHECK_BODY},
        responses=error_responses(400, 401, 403, 408, 411, 413, 415),
    )
    async def check_uploads(
        request: Request, threshold: Annotated[float, Query(gt=0, le=1)] = DEFAULT_THRESHOLD
    ) -> CheckAnswer:
        body = await read_body(request)
        if verify is not None:
            verify(request, body)
        results = await anyio.to_thread.run_sync(check, await _uploads(request, body), threshold)
        if failed := [f"{r.query}: {r.error}" for r in results if r.error is not None]:
            raise RequestError(415, f"not images that can be checked: {'; '.join(failed)}")
        return CheckAnswer(results=[Checked(query=r.query, match=_checked(r.match)) for r in results])


async def _uploads(request: Request, body: bytes) -> list[tuple[str, bytes | str]]:
    """The file parts of a multipart body already read by :func:`read_body`."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise RequestError(415, "send the images as multipart/form-data file parts (curl -F file=@IMG)")

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    # A malformed body is Starlette's HTTPException 400, answered as {"error": ...}.
    form = await Request(request.scope, replay).form()
    try:
        uploads: list[tuple[str, bytes | str]] = [
            (value.filename or key, await value.read())
            for key, value in form.multi_items()
            if isinstance(value, UploadFile)
        ]
    finally:
        await form.close()
    if not uploads:
        raise RequestError(400, "no file in the form: send one or more file parts (curl -F file=@IMG)")
    return uploads


def _checked(match: CheckMatch | None) -> CheckedMatch | None:
    if match is None:
        return None
    return CheckedMatch(
        path=display_path(match.path), ref=path_ref(match.path), score=match.score, kind=match.kind
    )
