"""The control socket's surface: HTTP + JSON on ``<data dir>/imgwatch.sock``, for the CLI.

Milvus Lite admits one process per data dir, so while the daemon runs, ``search``, ``status``,
``index`` and the jobs go through here instead of opening the store; the daemon's warm model answers
searches. Access is what the socket file's permissions allow: the data dir's owner
(:func:`imgwatch.web.server.bind_unix`). The client is :class:`imgwatch.ipc.DaemonClient`.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from imgwatch.errors import ImgwatchError, RootInUseError
from imgwatch.names import DUPLICATE_THRESHOLD
from imgwatch.search import SearchFilter
from imgwatch.sources.webhook import ForbiddenPathError, InvalidEventError, MalformedBodyError
from imgwatch.web.common import BlockingWork, RequestError, error_responses

#: The largest request the socket reads: a batch of query images, base64-encoded.
MAX_REQUEST_BYTES = 256 * 1024 * 1024
Reply = dict[str, Any]


@dataclass(frozen=True)
class VerdictCalls:
    """The not-duplicates verdicts (:mod:`imgwatch.verdicts`), as the socket serves them."""

    list_all: Callable[[], Reply]
    mark: Callable[[list[str], str | None], Reply]
    """``(paths, note)``: no two of these indexed files are duplicates."""
    withdraw: Callable[[str, str], Reply]
    """``(a, b)``: paths or content hashes."""


@dataclass(frozen=True)
class DedupeCalls:
    """The clean-up of duplicates (:mod:`imgwatch.dedupe`, :mod:`imgwatch.trash`), as the socket serves it."""

    plan: Callable[[str, list[str], float, bool], Reply]
    """``(rule, protect, threshold, exact)``: the plan, as ``imgwatch dedupe`` prints it; changes nothing."""
    discard: Callable[[list[str], list[str], dict[str, Any], list[str]], Reply]
    """``(paths, kept, reason)``: the paths to the trash while the kept files are there as indexed."""


@dataclass(frozen=True)
class LocalSurface:
    """What the daemon answers on its socket. Each callable may raise :class:`ImgwatchError` or
    ``ValueError`` (a bad request: 400), ``LookupError`` (404), :class:`RootInUseError` (409) or a
    webhook payload error (422)."""

    status: Callable[[], Reply]
    search: Callable[[list[tuple[str, bytes | str]], int], Reply]
    """``(queries, k)``: each query is ``(name, image bytes)`` or ``(name, why it is unreadable)``."""
    search_like: Callable[[list[str], int], Reply]
    duplicates: Callable[[float, bool], Reply]
    """``(threshold, exact)``: look-alike groups, or with ``exact`` the byte-identical ones."""
    index: Callable[[list[str]], Reply]
    invoke: Callable[[dict[str, Any]], Reply]
    run_job: Callable[..., Reply]
    """``(name)``: a maintenance job (compact, reconcile); ``("migrate", options)``: start moving the
    index to another store (:class:`MigrateRequest`'s fields), its progress then in :attr:`status`."""
    forget_root: Callable[[str], Reply]
    verdicts: VerdictCalls | None = None
    """None: this socket records no verdicts (its routes answer 404)."""
    search_with: Callable[[list[tuple[str, bytes | str]], int, bool, bool, SearchFilter], Reply] | None = None
    """``(queries, k, flip, crops, filter)``: :attr:`search` with the mirror image (``flip``), the
    centre and corner crops (``crops``) and filters.
    None where the daemon does not offer them: such requests are refused (400), never answered as
    plain searches."""
    search_like_with: Callable[[list[str], int, SearchFilter], Reply] | None = None
    """``(paths, k, filter)``: :attr:`search_like` among the files the filter admits."""
    work: BlockingWork = field(default_factory=lambda: BlockingWork("imgwatch-request"))
    """Where the callables run: daemon threads, which shutdown waits for within its bound."""
    check: Callable[[list[tuple[str, bytes | str]], float], Reply] | None = None
    """``(queries, threshold)``, as ``search`` takes queries: ``imgwatch check`` (``POST /check``)."""
    dedupe: DedupeCalls | None = None
    """None: this socket cleans nothing up (its routes answer 404)."""
    check_with: Callable[[list[tuple[str, bytes | str]], float, SearchFilter], Reply] | None = None
    """``(queries, threshold, filter)``: :attr:`check` among the files the filter admits."""
    report: Callable[[bool], Reply] | None = None
    """``imgwatch status``'s whole report, from the daemon's own catalog (with the failed files when
    asked), so that the command is a thin client; None where the daemon does not offer it (404)."""
    check_cropped: Callable[[list[tuple[str, bytes | str]], float, SearchFilter], Reply] | None = None
    """``(queries, threshold, filter)``: :attr:`check_with`, each file scored by the best of the query
    and its centre and four corners (``check --crops``); None: such requests are refused (400)."""
    duplicates_with: Callable[[float, bool, SearchFilter], Reply] | None = None
    """``(threshold, exact, filter)``: :attr:`duplicates` among the files the filter admits; None
    where the daemon does not offer it (filtered requests are refused, 400)."""


class QueryImage(BaseModel):
    query: str = Field(description="The query as the user named it; answers carry it back.")
    data: str | None = Field(default=None, description="The image's bytes, base64-encoded.")
    error: str | None = Field(default=None, description="Why the client could not read it.")


class FilterFields(BaseModel):
    """``--under``, ``--since`` and ``--until`` as the socket takes them (:class:`SearchFilter`)."""

    under: list[str] = Field(
        default_factory=list, description="Only files inside one of these absolute directories."
    )
    since_ns: int | None = Field(
        default=None, description="Only files modified at or after this instant (ns since the epoch)."
    )
    until_ns: int | None = Field(
        default=None, description="Only files modified before this instant (ns since the epoch)."
    )

    def search_filter(self) -> SearchFilter:
        relative = [d for d in self.under if not os.path.isabs(d)]
        if relative:
            raise RequestError(400, f"under: directories must be absolute paths, not {relative[0]!r}")
        return SearchFilter(tuple(os.path.normpath(d) for d in self.under), self.since_ns, self.until_ns)


class SearchRequest(FilterFields):
    # An option this daemon does not know is refused, never ignored: a client newer than the daemon
    # would otherwise get plain results for a mirrored or filtered search.
    model_config = ConfigDict(extra="forbid")

    k: int = Field(ge=1, description="Results per query.")
    queries: list[QueryImage] | None = Field(default=None, description="Images to search with.")
    like: list[str] | None = Field(default=None, description="Indexed files whose stored vectors to use.")
    flip: bool = Field(
        default=False,
        description="Score each file by the better of the query and its mirror image (not with `like`).",
    )
    crops: bool = Field(
        default=False,
        description="Score each file by the best of the query and its centre and four corners at 80 % "
        "of each side (6 model runs per query, 12 with `flip`; not with `like`).",
    )


class CheckRequest(FilterFields):
    # As SearchRequest: a filter this daemon does not know is refused, not ignored.
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(gt=0, le=1, description="The score from which a match counts.")
    queries: list[QueryImage] = Field(description="Images to check.")
    crops: bool = Field(
        default=False,
        description="Score each file by the best of the query and its centre and four corners at 80 % "
        "(6 model runs per query).",
    )


class DuplicatesRequest(FilterFields):
    # As SearchRequest: a filter this daemon does not know is refused, not ignored.
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        default=DUPLICATE_THRESHOLD, gt=0, le=1, description="Cosine similarity for look-alikes."
    )
    exact: bool = Field(default=False, description="Only byte-identical files (content hashes; no vectors).")


class MarkDistinctRequest(BaseModel):
    paths: list[str] = Field(min_length=2, description="Indexed files (absolute paths), no two duplicates.")
    note: str | None = Field(default=None, description="Kept with the verdict.")


class WithdrawRequest(BaseModel):
    a: str = Field(description="An indexed file's absolute path, or a content hash.")
    b: str


class DedupePlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Literal["largest", "smallest", "oldest", "newest", "shortest-path"] = Field(
        description="Which file of a group is kept."
    )
    protect: list[str] = Field(
        default_factory=list, description="Absolute folders whose files are always kept."
    )
    threshold: float = Field(
        default=DUPLICATE_THRESHOLD, gt=0, le=1, description="Cosine similarity for look-alikes."
    )
    exact: bool = Field(default=False, description="Only byte-identical files (content hashes).")


class DiscardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1, description="Indexed files (absolute paths) to move to the trash.")
    kept: list[str] = Field(
        min_length=1,
        description="The files they duplicate (at least one: a group is never emptied): if one of them "
        "is gone or changed, nothing is moved; a path among them is never moved.",
    )
    protect: list[str] = Field(
        default_factory=list,
        description="Folders (absolute) whose files are never moved, besides the daemon's own protect.",
    )
    reason: dict[str, Any] = Field(
        default_factory=dict, description="Written into each move's log line (what was kept, why)."
    )


class IndexRequest(BaseModel):
    roots: list[str] = Field(min_length=1)


class InvokeRequest(BaseModel):
    payload: dict[str, Any] = Field(description="A webhook body: generic or S3 records.")


class MigrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="A Milvus server URI, or 'lite' (the data dir's Milvus Lite file).")
    token: str | None = Field(default=None, description="For the target server; default: milvus_token.")
    batch: int = Field(default=500, ge=1, le=100_000, description="Vectors copied per batch.")
    pause: float = Field(default=0.0, ge=0, le=60, description="Seconds between batches.")


class ForgetRequest(BaseModel):
    root: str


def local_router(surface: LocalSurface) -> APIRouter:
    router = APIRouter(tags=["control socket"], responses=error_responses(400, 409, 413, 422))

    async def call(function: Callable[..., Reply], *args: Any) -> Reply:
        try:
            return await surface.work.run(function, *args)
        except RootInUseError as e:
            raise RequestError(409, str(e)) from None
        except LookupError as e:
            raise RequestError(404, str(e)) from None
        except (MalformedBodyError, InvalidEventError, ForbiddenPathError) as e:
            raise RequestError(422, str(e)) from None
        except (ImgwatchError, ValueError) as e:
            raise RequestError(400, str(e)) from None

    @router.get("/status", summary="The daemon's state: roots, queues, jobs, reindex")
    async def status() -> Reply:
        return await call(surface.status)

    @router.get(
        "/status/report", summary="`imgwatch status`'s report: the catalog's counts and the daemon's state"
    )
    async def report(failures: bool = False) -> Reply:
        if surface.report is None:
            raise RequestError(404, "this daemon does not report its catalog")
        return await call(surface.report, failures)

    @router.post("/search", summary="Search with images, or with indexed files' stored vectors")
    async def search(request: SearchRequest) -> Reply:
        where = request.search_filter()
        if request.like is not None:
            if request.flip or request.crops:
                option = "flip" if request.flip else "crops"
                raise RequestError(400, f"{option} needs query images: a like search uses stored vectors")
            if not where.active:
                return await call(surface.search_like, request.like, request.k)
            if surface.search_like_with is None:
                raise RequestError(400, "this daemon does not filter searches (under, since, until)")
            return await call(surface.search_like_with, request.like, request.k, where)
        queries: list[tuple[str, bytes | str]] = []
        for query in request.queries or []:
            if query.error is not None or query.data is None:
                queries.append((query.query, query.error or "no image data"))
                continue
            try:
                queries.append((query.query, base64.b64decode(query.data, validate=True)))
            except binascii.Error as e:
                raise RequestError(400, f"{query.query}: data is not base64: {e}") from None
        if not request.flip and not request.crops and not where.active:
            return await call(surface.search, queries, request.k)
        if surface.search_with is None:
            raise RequestError(400, "this daemon does not search mirrored images or crops or filter searches")
        return await call(surface.search_with, queries, request.k, request.flip, request.crops, where)

    if surface.check is not None:
        check = surface.check

        @router.post("/check", summary="Whether each image is already indexed: its best match or none")
        async def check_images(request: CheckRequest) -> Reply:
            where = request.search_filter()
            if request.crops:
                if surface.check_cropped is None:
                    raise RequestError(400, "this daemon does not check with crops")
                return await call(surface.check_cropped, _decoded(request.queries), request.threshold, where)
            if not where.active:
                return await call(check, _decoded(request.queries), request.threshold)
            if surface.check_with is None:
                raise RequestError(400, "this daemon does not filter checks")
            return await call(surface.check_with, _decoded(request.queries), request.threshold, where)

    @router.post("/duplicates", summary="Groups of duplicate images: look-alike, or exact")
    async def duplicates(request: DuplicatesRequest) -> Reply:
        where = request.search_filter()
        if not where.active:
            return await call(surface.duplicates, request.threshold, request.exact)
        if surface.duplicates_with is None:
            raise RequestError(400, "this daemon does not filter duplicate groups")
        return await call(surface.duplicates_with, request.threshold, request.exact, where)

    def verdict_calls() -> VerdictCalls:
        if surface.verdicts is None:
            raise RequestError(404, "this daemon records no verdicts")
        return surface.verdicts

    @router.get("/duplicates/verdicts", summary="The recorded not-duplicates verdicts")
    async def verdicts() -> Reply:
        return await call(verdict_calls().list_all)

    @router.post("/duplicates/verdicts", summary="Record that files are not duplicates")
    async def mark_distinct(request: MarkDistinctRequest) -> Reply:
        return await call(verdict_calls().mark, request.paths, request.note)

    @router.post("/duplicates/verdicts/withdraw", summary="Withdraw a not-duplicates verdict")
    async def withdraw(request: WithdrawRequest) -> Reply:
        return await call(verdict_calls().withdraw, request.a, request.b)

    def dedupe_calls() -> DedupeCalls:
        if surface.dedupe is None:
            raise RequestError(404, "this daemon cleans up no duplicates")
        return surface.dedupe

    @router.post("/dedupe/plan", summary="Which file of each duplicate group to keep; changes nothing")
    async def dedupe_plan(request: DedupePlanRequest) -> Reply:
        relative = [d for d in request.protect if not os.path.isabs(d)]
        if relative:
            raise RequestError(400, f"protect: folders must be absolute paths, not {relative[0]!r}")
        return await call(
            dedupe_calls().plan, request.rule, request.protect, request.threshold, request.exact
        )

    @router.post("/discard", summary="Move indexed files to the trash and drop them from the index")
    async def discard(request: DiscardRequest) -> Reply:
        relative = [p for p in [*request.paths, *request.kept] if not os.path.isabs(p)]
        if relative:
            raise RequestError(400, f"paths must be absolute, not {relative[0]!r}")
        return await call(
            dedupe_calls().discard, request.paths, request.kept, request.reason, request.protect
        )

    @router.post("/index", summary="Bring the index in line with folders, as `imgwatch index` does")
    async def index(request: IndexRequest) -> Reply:
        return await call(surface.index, request.roots)

    @router.post("/invoke", summary="Act on a webhook body, as `imgwatch invoke` does")
    async def invoke(request: InvokeRequest) -> Reply:
        return await call(surface.invoke, request.payload)

    @router.post("/jobs/{name}", summary="Run a maintenance job now: compact or reconcile")
    async def job(name: str) -> Reply:
        if name not in ("compact", "reconcile"):
            raise RequestError(404, f"no such job: {name}")
        return await call(surface.run_job, name)

    @router.post(
        "/migrate",
        summary="Start moving the index to another store while serving; its progress is in /status",
    )
    async def migrate(request: MigrateRequest) -> Reply:
        return await call(surface.run_job, "migrate", request.model_dump())

    @router.post("/roots/forget", summary="Forget a root and remove its entries")
    async def forget(request: ForgetRequest) -> Reply:
        return await call(surface.forget_root, request.root)

    return router


def _decoded(queries: list[QueryImage]) -> list[tuple[str, bytes | str]]:
    """``(name, image bytes)``, or ``(name, why it is unreadable)``; data that is not base64: 400."""
    decoded: list[tuple[str, bytes | str]] = []
    for query in queries:
        if query.error is not None or query.data is None:
            decoded.append((query.query, query.error or "no image data"))
            continue
        try:
            decoded.append((query.query, base64.b64decode(query.data, validate=True)))
        except binascii.Error as e:
            raise RequestError(400, f"{query.query}: data is not base64: {e}") from None
    return decoded
