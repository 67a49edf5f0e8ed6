"""Near-duplicate groups, found by streaming over the index.

One pass in batches: the catalog gives a batch of ids, the vector store their vectors, and each
batch is searched against the whole collection (top-k, cut at the threshold); every pair found
joins a union-find over entity ids. Memory is one batch of vectors plus the union-find, which only
holds ids that have a duplicate: never an n x n matrix, never every vector at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgwatch.context import Context
from imgwatch.services.abc import FileState

#: Neighbours asked for per vector at first. A vector whose neighbours all pass the threshold is
#: asked again with a larger limit, so a group bigger than this is still found whole.
FIRST_LIMIT = 16
#: Milvus's largest search limit (topk). A vector with more near-duplicates than this is linked to
#: this many of them, which is enough to join its group unless the group is split in an odd way.
MAX_LIMIT = 16384


@dataclass(frozen=True)
class DuplicateGroup:
    paths: list[str]
    """Member files, sorted by their bytes (``os.fsdecode`` form, as the catalog gives them)."""
    max_score: float
    """The highest cosine similarity between two members."""


class _UnionFind:
    """Disjoint sets over entity ids, with the best pair score seen in each set."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._best: dict[int, float] = {}

    def find(self, key: int) -> int:
        root = key
        while (parent := self._parent.get(root, root)) != root:
            root = parent
        while key != root:  # path compression keeps later finds short
            key, self._parent[key] = self._parent[key], root
        return root

    def union(self, a: int, b: int, score: float) -> None:
        self._parent.setdefault(a, a)
        self._parent.setdefault(b, b)
        root_a, root_b = self.find(a), self.find(b)
        best = max(score, self._best.get(root_a, score), self._best.get(root_b, score))
        if root_a != root_b:
            self._parent[root_b] = root_a
            self._best.pop(root_b, None)
        self._best[root_a] = best

    def groups(self) -> list[tuple[list[int], float]]:
        members: dict[int, list[int]] = {}
        for key in self._parent:
            members.setdefault(self.find(key), []).append(key)
        return [(keys, self._best[root]) for root, keys in members.items()]


def find_duplicates(ctx: Context, *, threshold: float = 0.95, batch_size: int = 256) -> list[DuplicateGroup]:
    """Groups of indexed files whose vectors score at least ``threshold`` pairwise, closed under
    transitivity (a ~ b and b ~ c puts a, b, c in one group), largest first.

    ``batch_size`` vectors are in flight at a time: pymilvus hands them over as lists of Python
    floats (about 130 kB per 4096-d vector) before they become arrays, so batches stay small.
    Only files the catalog vouches for (indexed, with a vector) take part; entities without such a
    row are skipped before they could link two groups.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    sets = _UnionFind()
    # The catalog names the batches and the vector store is read by primary key: Milvus Lite's
    # query_iterator materialises every remaining vector for each page it returns (measured: +80 MB
    # per page at 5,000 vectors), which would make the pass grow with the collection.
    for ids in ctx.catalog.iter_ids_with_vectors(batch_size):
        stored = ctx.vectors.get_vectors(ids)
        pending = [(key, stored[key]) for key in ids if key in stored]
        limit = FIRST_LIMIT
        while pending:
            # Plain top-k, cut at the threshold here: Milvus Lite's "range search" is a top-5k search
            # filtered afterwards, five times the work for the same hits.
            found = ctx.vectors.search([vector for _, vector in pending], limit)
            known = ctx.catalog.get_many({hit.id for hits in found for hit in hits})
            vouched = {key for key, r in known.items() if r.state is FileState.INDEXED and r.has_vector}
            full = []
            for (key, vector), hits in zip(pending, found, strict=True):
                close = [hit for hit in hits if hit.score >= threshold]
                for hit in close:
                    if hit.id != key and hit.id in vouched:
                        sets.union(key, hit.id, hit.score)
                if len(close) >= limit and limit < MAX_LIMIT:
                    # Every neighbour returned is a duplicate: there may be more beyond the limit.
                    full.append((key, vector))
            pending = full
            limit = min(limit * 8, MAX_LIMIT)
    groups = sets.groups()
    records = ctx.catalog.get_many({key for keys, _ in groups for key in keys})
    result = []
    for keys, best in groups:
        # A file deleted while the pass ran (the daemon keeps working meanwhile) drops out.
        paths = sorted((records[key].path for key in keys if key in records), key=_path_order)
        if len(paths) > 1:
            result.append(DuplicateGroup(paths, round(best, 6)))
    result.sort(key=lambda g: (-len(g.paths), -g.max_score, _path_order(g.paths[0])))
    return result


def _path_order(path: str) -> bytes:
    # Byte order, as the catalog sorts: stable for names that are not valid UTF-8 too.
    return os.fsencode(path)
