"""Duplicate groups: byte-identical ones from the catalog, look-alike ones by streaming over the index.

Exact groups (:func:`find_exact_duplicates`) are one GROUP BY over the catalog's content hashes: no
vector, no model, seconds at 100k files.

Look-alike groups (:func:`find_duplicates`) read every vector once, in batches (the catalog gives a
batch of ids, the vector store their vectors), into a temporary file, and score all pairs there in
blocks (:mod:`imgwatch.pairs`: numpy inner products, O(n^2 d) arithmetic at BLAS speed, no Python per
pair); every pair at or above the threshold joins a union-find over entity ids. Memory is one batch
of vectors on its way in, two blocks of vectors and their scores, and the union-find, which only
holds ids that have a duplicate: never an n x n matrix, never every vector at once. The user's
verdicts (:mod:`imgwatch.verdicts`) are enforced in the union-find itself: a union that would put
two contents judged distinct in one set is refused.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imgwatch.names import DUPLICATE_THRESHOLD
from imgwatch.services.abc import FileState
from imgwatch.verdicts import duplicate_catalog, kept_apart

if TYPE_CHECKING:
    from imgwatch.context import Context
    from imgwatch.pairs import BlockPairs, VectorFile
    from imgwatch.search import SearchFilter
    from imgwatch.services.abc import Catalog, FileRecord
    from imgwatch.verdicts import DuplicateCatalog

log = logging.getLogger(__name__)

EXACT = "exact"
SIMILAR = "similar"


@dataclass(frozen=True)
class DuplicateMember:
    """One file of a group, with what a user compares to choose which copy to keep."""

    path: str
    size: int
    """Bytes, as the index last saw the file."""
    width: int | None
    """Pixels, from the image header now; None when the file cannot be read."""
    height: int | None
    mtime: str
    """Modification time as the index last saw it, ISO 8601 in UTC."""
    score: float
    """The best cosine similarity to another member of its group (1.0 in an exact group)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DuplicateGroup:
    paths: list[str]
    """Member files, sorted by their bytes (``os.fsdecode`` form, as the catalog gives them)."""
    max_score: float
    """The highest cosine similarity between two members."""
    kind: str = SIMILAR
    """``exact`` when every member has the same content hash, else ``similar``."""
    members: list[DuplicateMember] = field(default_factory=list)
    """The members in the order of :attr:`paths`."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "max_score": self.max_score,
            "members": [m.as_dict() for m in self.members],
            "paths": self.paths,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DuplicateGroup:
        members = [DuplicateMember(**m) for m in raw.get("members", [])]
        return cls(list(raw["paths"]), float(raw["max_score"]), raw.get("kind", SIMILAR), members)


@dataclass(frozen=True)
class KeptApart:
    """A pair that scored as duplicates but was kept out of one group by a verdict."""

    a: str
    b: str
    score: float


@dataclass(frozen=True)
class DuplicatePass:
    groups: list[DuplicateGroup]
    """Largest first."""
    kept_apart: list[KeptApart]
    """The pairs whose union a verdict refused, with their scores (for a threshold histogram)."""


class _UnionFind:
    """Disjoint sets over entity ids, with the best pair score seen in each set and of each member;
    a union that would join two contents in ``apart`` (hash -> hashes judged distinct) is refused."""

    def __init__(self, apart: Mapping[str, set[str]]) -> None:
        self._parent: dict[int, int] = {}
        self._best: dict[int, float] = {}
        self._score: dict[int, float] = {}
        self._apart = apart
        # Only sets holding a content with a verdict have an entry: without verdicts this stays empty.
        self._hashes: dict[int, set[str]] = {}

    def add(self, key: int, content_hash: str | None) -> None:
        if key not in self._parent:
            self._parent[key] = key
            if content_hash is not None and content_hash in self._apart:
                self._hashes[key] = {content_hash}

    def find(self, key: int) -> int:
        root = key
        while (parent := self._parent.get(root, root)) != root:
            root = parent
        while key != root:  # path compression keeps later finds short
            key, self._parent[key] = self._parent[key], root
        return root

    def union(self, a: int, b: int, score: float) -> bool:
        """Join the sets of ``a`` and ``b`` (both added); False when a verdict forbids it. Sets only
        grow, so a refused pair stays apart for the rest of the pass."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            hashes_a, hashes_b = self._hashes.get(root_a), self._hashes.get(root_b)
            if hashes_a and hashes_b and any(not self._apart[h].isdisjoint(hashes_b) for h in hashes_a):
                return False
            self._parent[root_b] = root_a
            best_b = self._best.pop(root_b, score)
            self._best[root_a] = max(best_b, self._best.get(root_a, score))
            if hashes_b:
                self._hashes.setdefault(root_a, set()).update(self._hashes.pop(root_b))
        self._best[root_a] = max(score, self._best.get(root_a, score))
        for key in (a, b):
            self._score[key] = max(score, self._score.get(key, score))
        return True

    def score(self, key: int) -> float:
        return self._score.get(key, 0.0)

    def groups(self) -> list[tuple[list[int], float]]:
        members: dict[int, list[int]] = {}
        for key in self._parent:
            members.setdefault(self.find(key), []).append(key)
        return [(keys, self._best[root]) for root, keys in members.items() if len(keys) > 1]


def find_duplicates(
    ctx: Context,
    *,
    threshold: float = DUPLICATE_THRESHOLD,
    batch_size: int = 256,
    scratch_dir: str | os.PathLike[str] | None = None,
    where: SearchFilter | None = None,
) -> list[DuplicateGroup]:
    """The groups of :func:`duplicate_pass`."""
    found = duplicate_pass(
        ctx, threshold=threshold, batch_size=batch_size, scratch_dir=scratch_dir, where=where
    )
    return found.groups


def duplicate_pass(
    ctx: Context,
    *,
    threshold: float = DUPLICATE_THRESHOLD,
    batch_size: int = 256,
    scratch_dir: str | os.PathLike[str] | None = None,
    where: SearchFilter | None = None,
) -> DuplicatePass:
    """Groups of indexed files whose vectors score at least ``threshold`` pairwise, closed under
    transitivity (a ~ b and b ~ c puts a, b, c in one group), largest first; two files whose contents
    have a verdict are never in one group (each may still be grouped with others).

    The vectors are read ``batch_size`` at a time (pymilvus hands them over as lists of Python
    floats, about 130 kB per 4096-d vector, so batches stay small) into a temporary file in
    ``scratch_dir`` (the system's temporary directory by default; 16 kB per 4096-d vector), and
    every pair is scored there by :mod:`imgwatch.pairs`. Only files the catalog vouches for
    (indexed, with a vector) take part; entities without such a row are never read, so they cannot
    link two groups.

    ``where`` (``--under``, ``--since``, ``--until``): only the files it admits take part, as if the
    others were not indexed; a group is among them, and a file outside links no two of them. The
    pass then reads and scores only those vectors.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    # Imported here: the exact pass (and `duplicates --exact`) needs neither numpy nor BLAS.
    import numpy as np
    from threadpoolctl import threadpool_limits

    from imgwatch.pairs import VectorFile, close_pairs
    from imgwatch.services.cpu import cpus_we_may_run_on

    sets = _UnionFind(kept_apart(ctx.catalog))
    refused: dict[tuple[int, int], float] = {}
    # A process with a CPU model keeps numpy to one BLAS thread (extractor._use_the_cpus_we_may_run_on);
    # this pass is nearly all matrix products, so it uses every CPU it may while it lasts.
    with VectorFile(scratch_dir) as stored, threadpool_limits(limits=cpus_we_may_run_on(), user_api="blas"):
        # The catalog names the batches and the vector store is read by primary key: Milvus Lite's
        # query_iterator materialises every remaining vector for each page it returns (measured:
        # +80 MB per page at 5,000 vectors), which would make the pass grow with the collection.
        started = time.perf_counter()
        for listed in ctx.catalog.iter_ids_with_vectors(batch_size):
            ids = _admitted(ctx.catalog, listed, where)
            found = ctx.vectors.get_vectors(ids)
            keys = [key for key in ids if key in found]
            if keys:
                stored.append(keys, np.stack([found[key] for key in keys]))
        read = time.perf_counter()
        for _, _, pairs in close_pairs(stored, threshold):
            _join(ctx.catalog, sets, refused, stored, pairs)
        timings = {"vectors": len(stored), "read_s": read - started, "score_s": time.perf_counter() - read}
        log.info(
            "duplicates: read %(vectors)d vectors in %(read_s).1f s, scored every pair in %(score_s).1f s",
            timings,
            extra=timings,
        )
    return DuplicatePass(_similar_groups(ctx.catalog, sets), _kept_apart(ctx.catalog, refused))


def _join(
    catalog: Catalog,
    sets: _UnionFind,
    refused: dict[tuple[int, int], float],
    stored: VectorFile,
    pairs: BlockPairs,
) -> None:
    """Union the pairs of one row block, batch by batch and best pair first within a batch: the
    order in which the search-based pass met them (a batch of vectors searched against the whole
    collection, its hits sorted), so a file close to both sides of a verdict joins the same side."""
    import numpy as np

    keys = np.asarray(stored.keys, dtype=np.int64)
    first, second = keys[pairs.first], keys[pairs.second]
    batch = np.searchsorted(np.asarray(stored.batch_starts), pairs.first, side="right")
    # A pair inside one batch was met from both ends, the larger key first on equal scores.
    same = batch == np.searchsorted(np.asarray(stored.batch_starts), pairs.second, side="right")
    first, second = np.where(same, second, first), np.where(same, first, second)
    order = np.lexsort((-second, -first, -pairs.scores, batch))
    known = catalog.get_many({int(k) for k in first} | {int(k) for k in second})
    vouched = {key for key, r in known.items() if r.state is FileState.INDEXED and r.has_vector}
    for index in order:
        a, b, score = int(first[index]), int(second[index]), float(pairs.scores[index])
        if a not in vouched or b not in vouched:  # deleted since the vectors were read
            continue
        sets.add(a, known[a].content_hash)
        sets.add(b, known[b].content_hash)
        if not sets.union(a, b, score):
            pair = (min(a, b), max(a, b))
            refused[pair] = max(score, refused.get(pair, score))


def _admitted(catalog: Catalog, ids: list[int], where: SearchFilter | None) -> list[int]:
    if where is None or not where.active:
        return ids
    records = catalog.get_many(ids)
    return [key for key in ids if key in records and where.admits(records[key].path, records[key].mtime_ns)]


def find_exact_duplicates(
    catalog: Catalog | DuplicateCatalog, where: SearchFilter | None = None
) -> list[DuplicateGroup]:
    """Groups of indexed files with the same bytes (content hash), largest first. Reads the catalog
    only (``ctx.catalog``): no vector store, no model. With ``where``, among the files it admits
    (as :func:`duplicate_pass`)."""
    groups = []
    for same_bytes in duplicate_catalog(catalog).exact_duplicate_rows():
        rows = [r for r in same_bytes if where is None or where.admits(r.path, r.mtime_ns)]
        if len(rows) > 1:
            groups.append(_group(sorted(rows, key=lambda r: _path_order(r.path)), 1.0, lambda _: 1.0))
    return _largest_first(groups)


def image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the image's header (Pillow opens lazily: no pixels are decoded), or
    None for a file that cannot be read as an image."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # A header is only looked at: its decompression-bomb or EXIF warnings say nothing here.
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - Pillow raises many types for what it cannot read
        return None
    return int(width), int(height)


def _similar_groups(catalog: Catalog, sets: _UnionFind) -> list[DuplicateGroup]:
    groups = sets.groups()
    records = catalog.get_many({key for keys, _ in groups for key in keys})
    result = []
    for keys, best in groups:
        # A file deleted while the pass ran (the daemon keeps working meanwhile) drops out.
        rows = sorted((records[key] for key in keys if key in records), key=lambda r: _path_order(r.path))
        if len(rows) > 1:
            result.append(_group(rows, round(best, 6), lambda r: round(sets.score(r.id), 6)))
    return _largest_first(result)


def _group(rows: list[FileRecord], best: float, score: Callable[[FileRecord], float]) -> DuplicateGroup:
    exact = rows[0].content_hash is not None and len({r.content_hash for r in rows}) == 1
    # Byte-identical files have identical vectors: their cosine is 1 up to float rounding.
    members = [_member(r, 1.0 if exact else score(r)) for r in rows]
    return DuplicateGroup(
        [r.path for r in rows], 1.0 if exact else best, EXACT if exact else SIMILAR, members
    )


def _member(record: FileRecord, score: float) -> DuplicateMember:
    width, height = image_size(record.path) or (None, None)
    mtime = datetime.fromtimestamp(record.mtime_ns / 1e9, UTC)
    return DuplicateMember(
        record.path, record.size, width, height, mtime.isoformat(timespec="seconds"), score
    )


def _kept_apart(catalog: Catalog, refused: Mapping[tuple[int, int], float]) -> list[KeptApart]:
    records = catalog.get_many({key for pair in refused for key in pair})
    pairs = []
    for (a, b), score in refused.items():
        if a in records and b in records:
            first, second = sorted((records[a].path, records[b].path), key=_path_order)
            pairs.append(KeptApart(first, second, round(score, 6)))
    return sorted(pairs, key=lambda p: (-p.score, _path_order(p.a), _path_order(p.b)))


def _largest_first(groups: list[DuplicateGroup]) -> list[DuplicateGroup]:
    return sorted(groups, key=lambda g: (-len(g.paths), -g.max_score, _path_order(g.paths[0])))


def _path_order(path: str) -> bytes:
    # Byte order, as the catalog sorts: stable for names that are not valid UTF-8 too.
    return os.fsencode(path)
