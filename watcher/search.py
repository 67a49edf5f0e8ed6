"""Search: image files in, the most similar indexed files out, best first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from imgwatch.context import Context
from imgwatch.errors import ImageError
from imgwatch.services.abc import FileReader, FileRecord, FileState, Vector

#: Ask Milvus for a few more than k: entities the catalog no longer vouches for are dropped.
_SLACK = 8


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


def search_files(queries: Sequence[str], ctx: Context, *, k: int) -> list[QueryResult]:
    return search_images(read_queries(queries, ctx.files), ctx, k=k)


def search_images(queries: Sequence[tuple[str, bytes | str]], ctx: Context, *, k: int) -> list[QueryResult]:
    """Embed each query image (in parallel threads, so they share model batches) and search.

    ``queries`` holds ``(name, encoded image)`` pairs, or ``(name, error)`` for queries that could
    not be read; those are answered with their error.
    """

    def embed(item: tuple[str, bytes | str]) -> Vector | str:
        data = item[1]
        if isinstance(data, str):
            return data
        try:
            return ctx.extractor.embed(data)
        except ImageError as e:
            return e.reason

    with ThreadPoolExecutor(max_workers=max(1, min(len(queries), 16))) as pool:
        embedded = list(pool.map(embed, queries))
    vectors = [v for v in embedded if not isinstance(v, str)]
    hits = iter(search_vectors(vectors, ctx, k=k))
    return [
        QueryResult(query, [], error=v) if isinstance(v, str) else QueryResult(query, next(hits))
        for (query, _), v in zip(queries, embedded, strict=True)
    ]


def search_like(paths: Sequence[str], ctx: Context, *, k: int) -> list[QueryResult]:
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
            [stored[found[q].id] for q in answered], ctx, k=k, exclude=[found[q].id for q in answered]
        )
    )
    return [
        QueryResult(query, [], error=errors[query]) if query in errors else QueryResult(query, next(hits))
        for query in paths
    ]


def search_vectors(
    vectors: Sequence[Vector], ctx: Context, *, k: int, exclude: Sequence[int] | None = None
) -> list[list[Match]]:
    """The ``k`` best matches per vector. Paths come from the catalog (exact bytes); an entity of ours
    without an indexed catalog row is left out rather than reported under a path nobody vouches for.
    ``exclude`` gives, per vector, an entity id to leave out of its matches (the query's own)."""
    raw = ctx.vectors.search(vectors, k + _SLACK + (1 if exclude else 0))
    records = ctx.catalog.get_many({hit.id for hits in raw for hit in hits if hit.node is None})
    left_out: Sequence[int | None] = exclude or [None] * len(raw)
    results = []
    for hits, own in zip(raw, left_out, strict=True):
        matches = [
            Match(records[hit.id].path, hit.score)
            for hit in hits
            if hit.node is None
            and hit.id != own
            and hit.id in records
            and records[hit.id].state is FileState.INDEXED
        ]
        # Another watcher's files: it vouches for them in its own catalog; the path is the one it stored.
        matches += [Match(hit.path, hit.score, hit.node) for hit in hits if hit.node is not None]
        matches.sort(key=lambda m: m.score, reverse=True)
        results.append(matches[:k])
    return results
