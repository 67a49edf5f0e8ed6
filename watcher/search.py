"""Search: image files in, the most similar indexed files out, best first."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from imgwatch.context import Context
from imgwatch.errors import ImageError, ImgwatchError
from imgwatch.pathlocks import is_under
from imgwatch.services.abc import FileReader, FileRecord, FileState, SearchHit, Vector

#: Ask Milvus for a few more than k: entities the catalog no longer vouches for are dropped.
_SLACK = 8
#: Each round that leaves fewer than k matches after filtering asks for this many times more.
_WIDEN = 8
#: The most hits one Milvus search returns (its topk limit, Milvus Lite included).
MAX_HITS = 16384


class SearchFilterError(ImgwatchError):
    """A filter option that cannot be understood (a bad date, an empty range)."""

    def __init__(self, option: str, value: str, problem: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"{option} {value!r}: {problem}")


@dataclass(frozen=True)
class SearchFilter:
    """Which indexed files a search (or a duplicates or check pass) may answer with.

    Files are judged by the catalog's row: its path and the mtime it recorded when it indexed the
    file. The default filter lets everything through.
    """

    under: tuple[str, ...] = ()
    """Absolute directories: a file passes if it is inside one of them (on directory boundaries, as
    :func:`imgwatch.pathlocks.is_under`: ``/a/b`` does not hold ``/a/bc``). Empty: anywhere."""
    since_ns: int | None = None
    """Only files modified at or after this instant (ns since the epoch, inclusive)."""
    until_ns: int | None = None
    """Only files modified before this instant (ns since the epoch, exclusive)."""

    @classmethod
    def parse(
        cls, under: Iterable[str] = (), since: str | None = None, until: str | None = None
    ) -> SearchFilter:
        """From command-line text: directories made absolute (``~`` expanded, symlinks kept, as the
        catalog stores paths), ISO dates or date-times (without an offset: local time)."""
        directories = tuple(os.path.abspath(os.path.expanduser(d)) for d in under)
        since_ns = None if since is None else _instant_ns("--since", since)
        until_ns = None if until is None else _instant_ns("--until", until)
        if since_ns is not None and until_ns is not None and until_ns <= since_ns:
            raise SearchFilterError("--until", str(until), f"is not after --since {since}: no file can pass")
        return cls(directories, since_ns, until_ns)

    @property
    def active(self) -> bool:
        return bool(self.under) or self.since_ns is not None or self.until_ns is not None

    def admits(self, path: str, mtime_ns: int | None) -> bool:
        """Whether a file at ``path`` modified at ``mtime_ns`` passes; an unknown mtime passes no
        date bound (another watcher's files: their mtime is in its catalog, not ours)."""
        if self.under and not any(is_under(path, d) for d in self.under):
            return False
        if self.since_ns is None and self.until_ns is None:
            return True
        if mtime_ns is None:
            return False
        return (self.since_ns is None or mtime_ns >= self.since_ns) and (
            self.until_ns is None or mtime_ns < self.until_ns
        )

    def as_dict(self) -> dict[str, object]:
        """For the control socket: exact instants, so the daemon's time zone does not matter."""
        return {"under": list(self.under), "since_ns": self.since_ns, "until_ns": self.until_ns}


EVERYTHING = SearchFilter()


def _instant_ns(option: str, text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SearchFilterError(
            option,
            text,
            "not an ISO date or date-time (2024-06-01, 2024-06-01T14:30, 2024-06-01T14:30+02:00)",
        ) from None
    # A naive moment is the user's local time; astimezone() attaches that zone (DST included).
    return round(moment.astimezone().timestamp() * 1e6) * 1000


@dataclass(frozen=True)
class Match:
    path: str
    score: float
    """Cosine similarity to the query (1.0 for identical content)."""
    node: str | None = None
    """Another watcher sharing the collection that indexed this file (its path is on that machine)."""

    def as_dict(self) -> dict[str, object]:
        found: dict[str, object] = {"path": self.path, "score": self.score}
        if self.node is not None:
            found["node"] = self.node
        return found


@dataclass(frozen=True)
class QueryResult:
    query: str
    matches: list[Match]
    error: str | None = None


def read_queries(queries: Sequence[str], files: FileReader) -> list[tuple[str, bytes | str]]:
    """Each query file's bytes, or the reason it cannot be read."""
    read: list[tuple[str, bytes | str]] = []
    for query in queries:
        try:
            read.append((query, files.read(query).data))
        except ImageError as e:
            read.append((query, e.reason))
    return read


def search_files(
    queries: Sequence[str],
    ctx: Context,
    *,
    k: int,
    flip: bool = False,
    crops: bool = False,
    where: SearchFilter = EVERYTHING,
) -> list[QueryResult]:
    return search_images(read_queries(queries, ctx.files), ctx, k=k, flip=flip, crops=crops, where=where)


def search_images(
    queries: Sequence[tuple[str, bytes | str]],
    ctx: Context,
    *,
    k: int,
    flip: bool = False,
    crops: bool = False,
    where: SearchFilter = EVERYTHING,
) -> list[QueryResult]:
    """Embed each query image (in parallel threads, so they share model batches) and search.

    ``queries`` holds ``(name, encoded image)`` pairs, or ``(name, error)`` for queries that could
    not be read; those are answered with their error. Each result's score is the best of the
    query's views: with ``flip``, the query and its mirror image (left to right), so a mirrored copy
    ranks as its unmirrored original would; with ``crops``, the query and its centre and four
    corners at 80 % of each side (:func:`imgwatch.services.images.crop_views`), so a cropped copy
    ranks nearer where the uncropped one would; with both, the mirror image of each of those six
    too. Only files ``where`` admits are answered.
    """

    def embed(item: tuple[str, bytes | str]) -> tuple[Vector, list[bytes]] | str:
        data = item[1]
        if isinstance(data, str):
            return data
        try:
            vector = ctx.extractor.embed(data)
            # Only after the extractor accepted the image (its max_pixels included), so decoding
            # it again here is safe: no limit of our own to keep in step.
            return vector, extra_views(data, flip=flip, crops=crops)
        except ImageError as e:
            return e.reason

    with ThreadPoolExecutor(max_workers=max(1, min(len(queries), 16))) as pool:
        embedded = list(pool.map(embed, queries))
    # Every query's other views in one round of threads of their own, so that they share batches.
    extra = [view for found in embedded if not isinstance(found, str) for view in found[1]]
    extra_vectors: Iterator[Vector] = iter(())
    if extra:
        with ThreadPoolExecutor(max_workers=min(len(extra), 16)) as pool:
            extra_vectors = iter(list(pool.map(ctx.extractor.embed, extra)))
    views = {
        number: [found[0], *(next(extra_vectors) for _ in found[1])]
        for number, found in enumerate(embedded)
        if not isinstance(found, str)
    }
    hits = iter(search_vectors([v for vs in views.values() for v in vs], ctx, k=k, where=where))
    results = []
    for number, ((query, _), found) in enumerate(zip(queries, embedded, strict=True)):
        if isinstance(found, str):
            results.append(QueryResult(query, [], error=found))
        else:
            results.append(QueryResult(query, best_of([next(hits) for _ in views[number]], k)))
    return results


def extra_views(data: bytes, *, flip: bool, crops: bool) -> list[bytes]:
    """The encoded views :func:`search_images` adds to a query image it has embedded (none for a
    plain search); ``data`` must be one the extractor accepted (no pixel limit is applied here)."""
    if not flip and not crops:
        return []
    # Here, not at the top: thin clients import this module and must not load numpy.
    from imgwatch.services.images import crop_views, mirrored

    if crops:
        return crop_views(data, max_pixels=_ACCEPTED, mirror=flip)
    return [mirrored(data, max_pixels=_ACCEPTED)]


#: Stands for "no limit" when decoding an image the extractor has already decoded within its own.
_ACCEPTED = 1 << 62


def best_of(lists: Sequence[list[Match]], k: int) -> list[Match]:
    """One ranking from several views' rankings of the same files: each file (by node and path) with
    its best score, the ``k`` best. Exact when each list holds its view's top ``k``: a file in the
    true top ``k`` by best score is in the top ``k`` of the view that gave it that score."""
    if len(lists) == 1:
        return lists[0][:k]
    best: dict[tuple[str | None, str], Match] = {}
    for matches in lists:
        for match in matches:
            key = (match.node, match.path)
            if key not in best or match.score > best[key].score:
                best[key] = match
    return sorted(best.values(), key=lambda m: m.score, reverse=True)[:k]


def search_like(
    paths: Sequence[str], ctx: Context, *, k: int, where: SearchFilter = EVERYTHING
) -> list[QueryResult]:
    """Search "more like this": each query names an indexed file, whose stored vector is the query.

    No model runs and the file is not read (it may be unreadable, or gone from disk while still in
    the catalog). The query's own entry is left out of its results; other files with the same
    content are not. A path the index does not hold is answered with an error.
    """
    found: dict[str, FileRecord] = {}
    errors: dict[str, str] = {}
    for query in paths:
        # Paths are indexed absolute, symlinks kept as seen: abspath, not realpath.
        record = ctx.catalog.get(os.path.abspath(query))
        if record is None:
            errors[query] = "not in the index"
        elif record.state is not FileState.INDEXED or not record.has_vector:
            reason = f": {record.error}" if record.error else ""
            errors[query] = f"in the index but {record.state.value}, without a vector{reason}"
        else:
            found[query] = record
    stored = ctx.vectors.get_vectors({r.id for r in found.values()})
    for query, record in found.items():
        if record.id not in stored:
            errors[query] = "its vector is missing from the vector store (`imgwatch reindex` repairs it)"
    answered = [q for q in paths if q not in errors]
    hits = iter(
        search_vectors(
            [stored[found[q].id] for q in answered],
            ctx,
            k=k,
            exclude=[found[q].id for q in answered],
            where=where,
        )
    )
    return [
        QueryResult(query, [], error=errors[query]) if query in errors else QueryResult(query, next(hits))
        for query in paths
    ]


def search_vectors(
    vectors: Sequence[Vector],
    ctx: Context,
    *,
    k: int,
    exclude: Sequence[int] | None = None,
    where: SearchFilter = EVERYTHING,
) -> list[list[Match]]:
    """The ``k`` best matches per vector among the files ``where`` admits. Paths come from the
    catalog (exact bytes); an entity of ours without an indexed catalog row is left out rather than
    reported under a path nobody vouches for. ``exclude`` gives, per vector, an entity id to leave
    out of its matches (the query's own).

    The vector store knows paths but not mtimes, so the filter runs on the catalog's rows: while a
    query has fewer than ``k`` matches and the store had more to give, it is asked again for
    ``_WIDEN`` times as many, up to :data:`MAX_HITS`. Past that (a filter that admits a tiny share
    of a huge collection) fewer than ``k`` may come back."""
    results: list[list[Match]] = [[] for _ in vectors]
    pending = list(range(len(vectors)))
    limit = min(k + _SLACK + (1 if exclude else 0), MAX_HITS)
    while pending:
        raw = ctx.vectors.search([vectors[i] for i in pending], limit)
        records = ctx.catalog.get_many({hit.id for hits in raw for hit in hits if hit.node is None})
        again = []
        for i, hits in zip(pending, raw, strict=True):
            own = exclude[i] if exclude else None
            results[i] = _matches(hits, records, own, where)[:k]
            if len(results[i]) < k and len(hits) >= limit and limit < MAX_HITS:
                again.append(i)
        pending = again
        limit = min(limit * _WIDEN, MAX_HITS)
    return results


def _matches(
    hits: list[SearchHit], records: dict[int, FileRecord], own: int | None, where: SearchFilter
) -> list[Match]:
    matches = [
        Match(records[hit.id].path, hit.score)
        for hit in hits
        if hit.node is None
        and hit.id != own
        and hit.id in records
        and records[hit.id].state is FileState.INDEXED
        and where.admits(records[hit.id].path, records[hit.id].mtime_ns)
    ]
    # Another watcher's files: it vouches for them in its own catalog; the path is the one it stored.
    matches += [
        Match(hit.path, hit.score, hit.node)
        for hit in hits
        if hit.node is not None and where.admits(hit.path, None)
    ]
    matches.sort(key=lambda m: m.score, reverse=True)
    return matches
