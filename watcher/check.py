""" "Do I already have this?": each query image's best indexed match, when it is close enough.

A query whose bytes some indexed file already has (the catalog's ``content_hash``, as the indexer
computes it) is answered from the catalog alone: an ``exact`` match, no model run. The others are
embedded and searched for their single best match (``k=1``), which counts when its score reaches the
threshold: by default the one ``duplicates`` groups at, so "check says I have it" and "duplicates
would group them" agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from imgwatch.context import Context
from imgwatch.names import DUPLICATE_THRESHOLD
from imgwatch.search import EVERYTHING, Match, SearchFilter, search_images
from imgwatch.services.abc import FileRecord, FileState, content_hash
from imgwatch.verdicts import duplicate_catalog

if TYPE_CHECKING:
    from imgwatch.serving import Serving

#: The duplicates default: one constant, so the two commands cannot drift apart.
DEFAULT_THRESHOLD = DUPLICATE_THRESHOLD


class MatchKind(StrEnum):
    EXACT = "exact"
    """The indexed file has the query's bytes."""
    SIMILAR = "similar"
    """Different bytes, a vector at least the threshold close: a resized, re-encoded or edited copy."""


@dataclass(frozen=True)
class CheckMatch:
    path: str
    score: float
    """Cosine similarity to the query; 1.0 for an exact match (same bytes, same vector)."""
    kind: MatchKind
    node: str | None = None
    """Another watcher sharing the collection that indexed this file (its path is on that machine)."""

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"path": self.path, "score": self.score, "kind": self.kind.value}
        if self.node is not None:
            found["node"] = self.node
        return found

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CheckMatch:
        return cls(str(raw["path"]), float(raw["score"]), MatchKind(raw["kind"]), raw.get("node"))


@dataclass(frozen=True)
class CheckResult:
    query: str
    match: CheckMatch | None
    """The best indexed match at or above the threshold; None when there is none."""
    error: str | None = None
    """Why the query could not be checked (unreadable, not an image); ``match`` is then None."""

    def as_dict(self) -> dict[str, Any]:
        line: dict[str, Any] = {"query": self.query, "match": self.match.as_dict() if self.match else None}
        if self.error is not None:
            line["error"] = self.error
        return line

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CheckResult:
        match = raw.get("match")
        return cls(str(raw["query"]), CheckMatch.from_dict(match) if match else None, raw.get("error"))


def check_images(
    queries: Sequence[tuple[str, bytes | str]],
    ctx: Context,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    where: SearchFilter = EVERYTHING,
    crops: bool = False,
) -> list[CheckResult]:
    """For each ``(name, encoded image)`` query, in order, its best match at or above ``threshold``
    among the indexed files ``where`` admits (``--under``, ``--since``, ``--until``). With ``crops``,
    a file scores the best of the query and its centre and four corners at 80 % (as ``search
    --crops``): a cropped copy then reaches the threshold more often, at 6 model runs a query.

    ``(name, error)`` pairs (queries the caller could not read) are answered with their error, as are
    images the model cannot decode.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    hashes = {
        number: content_hash(data) for number, (_, data) in enumerate(queries) if isinstance(data, bytes)
    }
    exact: dict[int, CheckMatch] = {}
    for number, digest in hashes.items():
        # The query's own path is not excluded: checking a file that is itself indexed says "yes".
        twin = _twin(ctx, digest, where)
        if twin is not None:
            # Identical bytes decode to identical pixels, hence the same vector: no model run.
            exact[number] = CheckMatch(twin.path, 1.0, MatchKind.EXACT)
    to_search = [number for number in range(len(queries)) if number not in exact]
    searched = (
        search_images([queries[n] for n in to_search], ctx, k=1, crops=crops, where=where)
        if to_search
        else []
    )
    found = dict(zip(to_search, searched, strict=True))
    results = []
    for number, (name, _) in enumerate(queries):
        if number in exact:
            results.append(CheckResult(name, exact[number]))
            continue
        result = found[number]
        best = result.matches[0] if result.matches else None
        if result.error is not None or best is None or best.score < threshold:
            results.append(CheckResult(name, None, result.error))
            continue
        results.append(
            CheckResult(
                name, CheckMatch(best.path, best.score, _kind(best, hashes.get(number), ctx), best.node)
            )
        )
    return results


def _twin(ctx: Context, digest: str, where: SearchFilter) -> FileRecord | None:
    """An indexed file with these bytes (and a current vector) that ``where`` admits."""
    if not where.active:
        return ctx.catalog.find_by_hash(digest, exclude_path="", signature=ctx.signature_key)
    for path in duplicate_catalog(ctx.catalog).paths_by_hash([digest]).get(digest, []):
        record = ctx.catalog.get(path)
        if (
            record is not None
            and record.state is FileState.INDEXED
            and record.has_vector
            and record.signature == ctx.signature_key
            and where.admits(record.path, record.mtime_ns)
        ):
            return record
    return None


def _kind(match: Match, digest: str | None, ctx: Context) -> MatchKind:
    """Exact when the matched file's recorded hash is the query's. Rare after the hash lookup above
    (a twin whose vector an older extractor made, say); another node's files have no hash here."""
    if match.node is None and digest is not None:
        record = ctx.catalog.get(match.path)
        if record is not None and record.content_hash == digest:
            return MatchKind.EXACT
    return MatchKind.SIMILAR


#: ``(queries, threshold) -> results``: what the daemon's surfaces call (see :func:`serving_check`).
CheckImages = Callable[[Sequence[tuple[str, bytes | str]], float], list[CheckResult]]


def serving_check(serving: Serving) -> CheckImages:
    """:func:`check_images` on the daemon's current context, held for the whole call (a reindex
    switching collections waits for it)."""

    def check(queries: Sequence[tuple[str, bytes | str]], threshold: float) -> list[CheckResult]:
        with serving.use() as ctx:
            return check_images(queries, ctx, threshold=threshold)

    return check


def serving_check_cropped(
    serving: Serving,
) -> Callable[[list[tuple[str, bytes | str]], float, SearchFilter], dict[str, Any]]:
    """``check --crops`` as the control socket serves it: :func:`check_images` with ``crops`` on the
    daemon's current context, among the files the filter admits, answered as :func:`check_reply`."""

    def check(
        queries: list[tuple[str, bytes | str]], threshold: float, where: SearchFilter
    ) -> dict[str, Any]:
        with serving.use() as ctx:
            results = check_images(queries, ctx, threshold=threshold, where=where, crops=True)
        return check_reply(results) | {"filtered": True}

    return check


def check_reply(results: Sequence[CheckResult]) -> dict[str, Any]:
    """The control socket's answer: ``{"results": [{"query", "match", "error"?}]}``."""
    return {"results": [result.as_dict() for result in results]}
