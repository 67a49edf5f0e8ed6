"""The search page's Duplicates view: duplicate groups paged by the server, the actions a user takes
on them, and a threshold histogram. Routes (all behind the page's access rule, :func:`page_access`):

- ``GET /duplicates`` (the view; :mod:`imgwatch.web.page` serves it with the page's other files);
- ``GET /api/duplicates?offset=&limit=&threshold=&exact=``: one page of groups, largest first;
- ``GET /api/duplicates/histogram?threshold=``: each indexed file's best score to another file,
  binned, with the scores of the user's verdicts and the threshold that separates them best;
- ``POST /api/duplicates/distinct``: "not duplicates" (:func:`imgwatch.verdicts.mark_distinct`);
- ``POST /api/duplicates/keep``: "keep this one", the other members to the trash;
- ``POST /api/duplicates/keep-all`` and ``/api/duplicates/unhide``: hide a group for this review.

Groups and neighbour scores are computed in the background and kept per index generation
(:mod:`imgwatch.web.review_cache`); a request never waits for a pass, it gets 202 until one is done.

The POST routes change files and verdicts, so they also refuse what a cross-site page can send: a
browser's ``Origin`` (or ``Sec-Fetch-Site``) naming another site, and bodies that are not JSON (a
plain HTML form cannot send ``application/json``; a script on another site would need a CORS
preflight, which this server never grants).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from imgwatch.duplicates import EXACT, DuplicateGroup
from imgwatch.names import DUPLICATE_THRESHOLD
from imgwatch.report import display_path
from imgwatch.thumbnails import ThumbnailForbiddenError, ThumbnailNotFoundError, ThumbnailUnavailableError
from imgwatch.verdicts import NotIndexedError, VerdictError
from imgwatch.web.common import (
    JSONAsciiResponse,
    RequestError,
    error_responses,
    path_from_ref,
    path_ref,
    same_site,
)
from imgwatch.web.review_cache import Answer, ComputedCache
from imgwatch.web.review_math import NeighbourScores, histogram, separating_threshold

if TYPE_CHECKING:
    from imgwatch.trash import Discarded

MAX_LIMIT = 200
#: Labelled "confirmed duplicate" scores kept for the histogram (oldest dropped).
MAX_CONFIRMED = 1000
#: Scores of pairs confirmed as duplicates on the page ("keep this one"), in the catalog's meta table.
CONFIRMED_META_KEY = "review_confirmed_scores"
#: Files whose nearest-neighbour score the histogram shows, at most (a seeded uniform sample).
NEIGHBOUR_SAMPLE = 2000
#: The log of the files the page sent to the trash, in the data dir: the one `imgwatch dedupe` writes.


@dataclass(frozen=True)
class ReviewBackend:
    """What the Duplicates view needs from the daemon. The blocking ones run in worker threads."""

    groups: Callable[[float, bool], list[DuplicateGroup]]
    """``(threshold, exact)``: a whole duplicates pass (minutes on a big library)."""
    neighbour_scores: Callable[[], NeighbourScores]
    """Each indexed file's best score to another file (of a uniform sample on a big library)."""
    generation: Callable[[], Hashable]
    """Changes whenever the index, or a verdict, does: cheap, read on every request."""
    verdict_pairs: Callable[[], list[tuple[str, str, float]]]
    """``(a, b, score)`` of every "not duplicates" verdict whose two contents are indexed."""
    pair_scores: Callable[[Sequence[tuple[str, str]]], list[float | None]]
    """The cosine of each pair of indexed files (None for a file without a vector)."""
    mark_distinct: Callable[[list[str]], Any]
    """:func:`imgwatch.verdicts.mark_distinct`; raises :class:`VerdictError`."""
    discard: Callable[[list[str], str, Mapping[str, Any]], Sequence[Discarded]]
    """``(paths, kept, reason)``: ``imgwatch.trash.discard_keeping``: to the trash, logged, out of
    the index, only while the file kept is still there as indexed."""
    check_visible: Callable[[str], None]
    """Raises ``ThumbnailForbiddenError`` for a file outside the roots (the page shows none of those
    and may trash none), ``ThumbnailNotFoundError`` for one not indexed."""
    confirmed: Callable[[], list[float]]
    """Scores of pairs the user confirmed as duplicates ("keep this one" on a similar group)."""
    add_confirmed: Callable[[list[float]], None]


class Member(BaseModel):
    path: str = Field(description="The file, as the page shows paths (undecodable bytes as \\xNN).")
    ref: str = Field(description="The path's bytes, percent-encoded: give it back to the POST routes.")
    thumb: str = Field(description="Its thumbnail's URL on this server.")
    size: int = Field(description="Bytes, as the index last saw the file.")
    width: int | None = Field(description="Pixels; null when the file cannot be read now.")
    height: int | None
    mtime: str = Field(description="Modification time, ISO 8601 UTC.")
    score: float = Field(description="Its best cosine similarity to another member (1.0 when exact).")


class Group(BaseModel):
    kind: str = Field(description="exact (byte-identical) or similar.", examples=["similar"])
    max_score: float = Field(description="The highest cosine similarity between two members.")
    members: list[Member] = Field(description="In path byte order.")


class DuplicatesPage(BaseModel):
    status: str = Field(description="ready, or computing (202: ask again shortly).", examples=["ready"])
    threshold: float
    exact: bool
    offset: int
    limit: int
    total: int = Field(description="Groups in the whole result, those hidden by keep-all left out.")
    hidden: int = Field(description="Groups hidden for this review by keep-all.")
    stale: bool = Field(description="The index changed since this result; a fresh one is being computed.")
    computed_at: str | None = Field(description="When this result was computed (ISO 8601 UTC).")
    computing_since: str | None = Field(
        default=None, description="When the computation under way for this view started (ISO 8601 UTC)."
    )
    groups: list[Group] = Field(description="Largest first (then the highest score).")


class Bin(BaseModel):
    low: float
    high: float
    count: int = Field(description="Files whose best score to another file is in [low, high).")


class VerdictPoint(BaseModel):
    a: str
    b: str
    score: float = Field(description="The cosine similarity of the two files marked not duplicates.")


class Histogram(BaseModel):
    status: str = Field(description="ready, or computing (202).")
    files: int = Field(description="Files scored: all indexed files, or a uniform sample of a big library.")
    indexed: int = Field(description="Files with a vector in the index.")
    stale: bool = Field(description="The index changed since these scores; fresh ones are being computed.")
    bins: list[Bin]
    verdicts: list[VerdictPoint] = Field(description="The not-duplicates verdicts, as pairs with scores.")
    confirmed: list[float] = Field(description='Scores of pairs confirmed as duplicates by "keep this one".')
    threshold: float = Field(description="The threshold asked about (where the view draws its line).")
    suggested: float | None = Field(
        description="The threshold that misclassifies the fewest labelled pairs, in the middle of the "
        "widest such gap; null without any verdict or confirmation."
    )


class PathsBody(BaseModel):
    paths: list[str] = Field(min_length=2, max_length=1000, description="Members' refs, percent-encoded.")


class KeepBody(BaseModel):
    keep: str = Field(description="The ref of the member to keep.")
    trash: list[str] = Field(min_length=1, max_length=1000, description="Refs of the members to trash.")
    threshold: float = Field(gt=0, le=1, description="The threshold of the view the group was shown in.")
    exact: bool = False


class Trashed(BaseModel):
    path: str
    trashed_to: str | None = Field(description="Where the file is in the trash now; null if it failed.")
    error: str | None


class KeepAnswer(BaseModel):
    kept: str
    trashed: list[Trashed]


class Hidden(BaseModel):
    hidden: int = Field(description="Groups hidden for this review now.")


THRESHOLD = Annotated[
    float,
    Query(
        ge=0.5,
        le=1,
        description="Cosine similarity at which files group (0.5 at least: below it, nothing looks alike).",
    ),
]
EXACT_ONLY = Annotated[bool, Query(description="Byte-identical groups only (from the catalog: fast).")]


def same_site_post(request: Request) -> None:
    """Refuse a state-changing request a page on another site could make a browser send: a foreign
    origin, or a body a plain form can send (anything but JSON needs no CORS preflight)."""
    same_site(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(415, "send the body as application/json")


@dataclass
class _Review:
    backend: ReviewBackend
    groups: ComputedCache[tuple[float, bool], list[DuplicateGroup]]
    scores: ComputedCache[None, NeighbourScores]
    hidden: set[frozenset[str]] = field(default_factory=set)
    """Groups hidden by keep-all, by their members: a group that gains a member shows again."""

    def visible(self, groups: list[DuplicateGroup]) -> list[DuplicateGroup]:
        hidden = frozenset(self.hidden)  # a copy: another request's keep-all may change the set meanwhile
        return [g for g in groups if frozenset(g.paths) not in hidden]


def review_router(backend: ReviewBackend) -> APIRouter:
    """The routes; the page's router includes them behind its access rule."""
    review = _Review(
        backend,
        ComputedCache(lambda key: backend.groups(*key), backend.generation, "duplicates"),
        ComputedCache(lambda _key: backend.neighbour_scores(), backend.generation, "neighbour-scores"),
    )
    router = APIRouter(tags=["duplicates"])
    posts = [Depends(same_site_post)]

    @router.get(
        "/api/duplicates",
        summary="One page of duplicate groups, largest first",
        responses={202: {"model": DuplicatesPage}, **error_responses(400, 401, 403, 500)},
        # A cross-site <img> must not start a pass: it costs minutes and holds the serving gate.
        dependencies=[Depends(same_site)],
    )
    def duplicates(
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
        threshold: THRESHOLD = DUPLICATE_THRESHOLD,
        exact: EXACT_ONLY = False,
    ) -> Any:
        answer = review.groups.get((threshold, exact))
        groups = review.visible(answer.done.value) if answer.done else []
        page = DuplicatesPage(
            status="ready" if answer.done else "computing",
            threshold=threshold,
            exact=exact,
            offset=offset,
            limit=limit,
            total=len(groups),
            hidden=len(answer.done.value) - len(groups) if answer.done else 0,
            stale=answer.stale,
            computed_at=_when(answer),
            computing_since=answer.running_since.isoformat(timespec="seconds")
            if answer.running_since
            else None,
            groups=[_group(g) for g in groups[offset : offset + limit]],
        )
        return _ready_or_202(answer, page)

    @router.get(
        "/api/duplicates/histogram",
        summary="Each file's best score to another file, binned, with the user's verdicts",
        responses={202: {"model": Histogram}, **error_responses(400, 401, 403, 500)},
        # A cross-site <img> must not start a pass: it costs minutes and holds the serving gate.
        dependencies=[Depends(same_site)],
    )
    def neighbour_histogram(threshold: THRESHOLD = DUPLICATE_THRESHOLD) -> Any:
        answer = review.scores.get(None)
        scored = answer.done.value if answer.done else NeighbourScores([], 0)
        verdicts = [
            VerdictPoint(a=display_path(a), b=display_path(b), score=score)
            for a, b, score in backend.verdict_pairs()
        ]
        confirmed = backend.confirmed()
        negatives = [v.score for v in verdicts]
        marks = [*negatives, *confirmed, threshold]
        result = Histogram(
            status="ready" if answer.done else "computing",
            files=len(scored.scores),
            indexed=scored.indexed,
            stale=answer.stale,
            bins=[Bin(low=lo, high=hi, count=n) for lo, hi, n in histogram(scored.scores, marks)],
            verdicts=verdicts,
            confirmed=confirmed,
            threshold=threshold,
            suggested=separating_threshold(negatives, confirmed),
        )
        return _ready_or_202(answer, result)

    @router.post(
        "/api/duplicates/distinct",
        summary='"Not duplicates": a verdict that these files never group together again',
        dependencies=posts,
        responses=error_responses(400, 401, 403, 404, 409, 415),
    )
    def distinct(body: PathsBody) -> Any:
        paths = [path_from_ref(ref) for ref in body.paths]
        for path in paths:
            _check_visible(backend, path)
        try:
            marked = backend.mark_distinct(paths)
        except NotIndexedError as e:
            raise RequestError(404, str(e)) from None
        except VerdictError as e:
            raise RequestError(409, str(e)) from None
        together = frozenset(paths)
        # Every pair among them has a verdict now: the group they formed is gone (each file may
        # still join another group; the recomputation shows that).
        review.groups.patch(lambda groups: [g for g in groups if not together <= frozenset(g.paths)])
        return marked.as_dict()

    @router.post(
        "/api/duplicates/keep",
        summary='"Keep this one": the group\'s other members to the trash',
        description="Every file named must be a member of one group the view showed at this threshold.",
        dependencies=posts,
        responses=error_responses(400, 401, 403, 404, 409, 415),
    )
    def keep(body: KeepBody) -> KeepAnswer:
        kept = path_from_ref(body.keep)
        trash = list(dict.fromkeys(path_from_ref(ref) for ref in body.trash))
        if kept in trash:
            raise RequestError(400, "the file to keep is also among the files to trash")
        shown = review.groups.peek((body.threshold, body.exact)) or []
        group = next((g for g in shown if kept in g.paths and set(trash) <= set(g.paths)), None)
        if group is None:
            raise RequestError(409, "these files are not one group of the current view: reload it")
        for path in (kept, *trash):
            _check_visible(backend, path)
        scores = backend.pair_scores([(kept, path) for path in trash]) if group.kind != EXACT else []
        reason = {"kept": kept, "group": group.paths, "threshold": body.threshold, "via": "search page"}
        results = backend.discard(trash, kept, reason)
        gone = {r.path for r in results if r.error is None}
        # Only the pairs whose copy really went are confirmed duplicates (an exact group adds none).
        went = [s for path, s in zip(trash, scores, strict=False) if s is not None and path in gone]
        backend.add_confirmed(went)
        review.groups.patch(lambda groups: _without(groups, gone))
        return KeepAnswer(
            kept=display_path(kept),
            trashed=[
                Trashed(path=display_path(r.path), trashed_to=r.trashed_to, error=r.error) for r in results
            ],
        )

    @router.post(
        "/api/duplicates/keep-all",
        summary='"Keep all": hide this group for this review (no verdict is recorded)',
        dependencies=posts,
        responses=error_responses(400, 401, 403, 415),
    )
    def keep_all(body: PathsBody) -> Hidden:
        review.hidden.add(frozenset(path_from_ref(ref) for ref in body.paths))
        return Hidden(hidden=len(review.hidden))

    @router.post(
        "/api/duplicates/unhide",
        summary="Show the groups hidden by keep-all again",
        dependencies=posts,
        responses=error_responses(401, 403, 415),
    )
    def unhide() -> Hidden:
        review.hidden.clear()
        return Hidden(hidden=0)

    return router


def _check_visible(backend: ReviewBackend, path: str) -> None:
    try:
        backend.check_visible(path)
    except ThumbnailForbiddenError as e:
        raise RequestError(403, str(e)) from None
    except ThumbnailNotFoundError:
        raise RequestError(404, f"{display_path(path)} is not an indexed file") from None
    except ThumbnailUnavailableError:
        pass  # indexed and inside the roots, only not decodable now: it may still be trashed


def _without(groups: list[DuplicateGroup], gone: set[str]) -> list[DuplicateGroup]:
    kept = []
    for g in groups:
        members = [m for m in g.members if m.path not in gone]
        if len(members) > 1:
            kept.append(replace(g, paths=[m.path for m in members], members=members))
    return kept


def _group(group: DuplicateGroup) -> Group:
    return Group(
        kind=group.kind,
        max_score=group.max_score,
        members=[
            Member(
                path=display_path(m.path),
                ref=path_ref(m.path),
                thumb="/thumb?path=" + path_ref(m.path),
                size=m.size,
                width=m.width,
                height=m.height,
                mtime=m.mtime,
                score=m.score,
            )
            for m in group.members
        ],
    )


def _when(answer: Answer[Any]) -> str | None:
    return answer.done.computed_at.isoformat(timespec="seconds") if answer.done else None


def _ready_or_202(answer: Answer[Any], body: BaseModel) -> Any:
    if answer.error is not None:
        raise RequestError(
            500, f"computing this failed (it is tried again on the next request): {answer.error}"
        )
    if answer.done is None:
        return JSONAsciiResponse(body.model_dump(mode="json"), status_code=202, headers={"Retry-After": "1"})
    return body
