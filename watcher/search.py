"""Search: image files in, the most similar indexed files out, best first."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from watcher.context import Context
from watcher.errors import ImageError
from watcher.services.abc import FileReader, FileState, Vector

#: Ask Milvus for a few more than k: entities the catalog no longer vouches for are dropped.
_SLACK = 8


@dataclass(frozen=True)
class Match:
    path: str
    score: float
    """Cosine similarity to the query (1.0 for identical content)."""


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


def search_vectors(vectors: Sequence[Vector], ctx: Context, *, k: int) -> list[list[Match]]:
    """The ``k`` best matches per vector. Paths come from the catalog (exact bytes); an entity without
    an indexed catalog row is left out rather than reported under a path nobody vouches for."""
    raw = ctx.vectors.search(vectors, k + _SLACK)
    records = ctx.catalog.get_many({hit.id for hits in raw for hit in hits})
    results = []
    for hits in raw:
        matches = [
            Match(records[hit.id].path, hit.score)
            for hit in hits
            if hit.id in records and records[hit.id].state is FileState.INDEXED
        ]
        matches.sort(key=lambda m: m.score, reverse=True)
        results.append(matches[:k])
    return results
