"""The look-alike pass by blocked inner products (issue 15, "Scale") finds what the pass it replaced
found: the same groups, scores and refused pairs, on Milvus Lite and on a Milvus server. Synthetic
unit vectors in a real catalog (SQLite, migrated) and a real vector store; no model, no images."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from imgwatch import duplicates, pairs
from imgwatch.context import Context
from imgwatch.duplicates import DuplicatePass, duplicate_pass, find_exact_duplicates
from imgwatch.search import SearchFilter
from imgwatch.services.abc import ExtractorSignature, FileState, Vector
from imgwatch.services.build import NoModel
from imgwatch.services.catalog import SQLiteCatalog, open_catalog
from imgwatch.services.cpu import cpus_we_may_run_on
from imgwatch.services.files import LocalFileReader
from imgwatch.services.vectors import MilvusVectorStore
from imgwatch.verdicts import kept_apart, mark_distinct
from tests.conftest import MilvusTarget, fill_synthetic

DIMENSION = 128
THRESHOLD = 0.9
DAY_NS = 86_400 * 10**9


def _unit(rows: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)
    return unit


def _collection(n: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors (two of them score ~0 +- 0.09 at 128-d) with planted look-alikes:
    groups of 2 to 6 near-copies, and chains a ~ b ~ c where a and c score below the threshold."""
    rng = np.random.default_rng(seed)
    vectors = _unit(rng.standard_normal((n, DIMENSION)))
    for start in range(0, n - 10, 37):
        size = 2 + (start // 37) % 5
        base = vectors[start]
        for k in range(1, size):  # noise of norm ~0.2: cosine ~0.98 to the base
            vectors[start + k] = _unit(base + rng.standard_normal(DIMENSION) * (0.2 / DIMENSION**0.5))
    for start in range(20, n - 3, 111):
        # a, b, c on an arc: a.b = b.c = cos 24 deg ~ 0.91, a.c = cos 48 deg ~ 0.67.
        vectors[start + 1], vectors[start + 2] = _arc(vectors[start], rng, (24.0, 48.0))
    return vectors


def _arc(start: np.ndarray, rng: np.random.Generator, degrees: tuple[float, float]) -> np.ndarray:
    """Two unit vectors at ``degrees`` from ``start`` on one great circle through it."""
    other = _unit(rng.standard_normal(DIMENSION))
    ortho = _unit(other - (other @ start) * start)
    angles = np.radians(np.asarray(degrees))[:, None]
    return _unit(np.cos(angles) * start + np.sin(angles) * ortho)


def _context(catalog: SQLiteCatalog, store: MilvusVectorStore) -> Context:
    signature = ExtractorSignature("synthetic", "synthetic", "none", "none", DIMENSION, "fp32")
    return Context(catalog, store, NoModel(signature), LocalFileReader(1))


def _search_pass(ctx: Context, threshold: float, batch_size: int) -> DuplicatePass:
    """The pass this one replaced (main at 4eba957): each batch searched against the whole collection
    through the vector store, top-k cut at the threshold, the limit raised while every hit passes."""
    first_limit, max_limit = 16, 16384
    sets = duplicates._UnionFind(kept_apart(ctx.catalog))
    refused: dict[tuple[int, int], float] = {}
    for ids in ctx.catalog.iter_ids_with_vectors(batch_size):
        stored = ctx.vectors.get_vectors(ids)
        pending = [(key, stored[key]) for key in ids if key in stored]
        limit = first_limit
        while pending:
            found = ctx.vectors.search([vector for _, vector in pending], limit)
            known = ctx.catalog.get_many({hit.id for hits in found for hit in hits} | {k for k, _ in pending})
            vouched = {key for key, r in known.items() if r.state is FileState.INDEXED and r.has_vector}
            full, found_pairs = [], []
            for (key, vector), hits in zip(pending, found, strict=True):
                close = [hit for hit in hits if hit.score >= threshold]
                if key in vouched:
                    found_pairs += [
                        (hit.score, key, hit.id) for hit in close if hit.id != key and hit.id in vouched
                    ]
                if len(close) >= limit and limit < max_limit:
                    full.append((key, vector))
            for score, a, b in sorted(found_pairs, reverse=True):
                sets.add(a, known[a].content_hash)
                sets.add(b, known[b].content_hash)
                if not sets.union(a, b, score):
                    pair = (min(a, b), max(a, b))
                    refused[pair] = max(score, refused.get(pair, score))
            pending = full
            limit = min(limit * 8, max_limit)
    return DuplicatePass(
        duplicates._similar_groups(ctx.catalog, sets), duplicates._kept_apart(ctx.catalog, refused)
    )


def _assert_same(new: DuplicatePass, old: DuplicatePass) -> None:
    # Equal up to the order of groups of one size whose best scores tie within float rounding (the
    # chains are all 24 degrees): a server's scores and numpy's differ in the last bits.
    old_groups = {tuple(g.paths): g for g in old.groups}
    assert sorted(old_groups) == sorted(tuple(g.paths) for g in new.groups)
    for group in new.groups:
        before = old_groups[tuple(group.paths)]
        assert group.kind == before.kind
        assert group.max_score == pytest.approx(before.max_score, abs=1e-5)
        assert [m.score for m in group.members] == pytest.approx([m.score for m in before.members], abs=1e-5)
    assert [(len(g.paths), g.max_score) for g in new.groups] == sorted(
        ((len(g.paths), g.max_score) for g in new.groups),
        key=lambda size_score: (-size_score[0], -size_score[1]),
    )
    assert {(p.a, p.b): pytest.approx(p.score, abs=1e-5) for p in old.kept_apart} == {
        (p.a, p.b): p.score for p in new.kept_apart
    }


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    opened = open_catalog(tmp_path / "catalog.db")
    yield opened
    opened.close()


def test_the_blocked_pass_finds_what_the_search_pass_found(
    catalog: SQLiteCatalog, milvus: MilvusTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups, chains, a verdict and a file close to both of its sides, over blocks that cut
    through groups; on Lite and on a server."""
    vectors = _collection(700, seed=7)
    # A verdict between two files that only the one between them links (16 and 20 degrees from it,
    # 36 apart): it joins the closer side, the other pair is refused.
    vectors[401], vectors[402] = _arc(vectors[400], np.random.default_rng(1), (16.0, 36.0))
    store = milvus.open(DIMENSION)
    try:
        paths = fill_synthetic(catalog, store, vectors)
        mark_distinct(catalog, [paths[400], paths[402]])
        ctx = _context(catalog, store)
        old = _search_pass(ctx, THRESHOLD, batch_size=50)
        # Blocks of two batches against 150 columns: groups and chains straddle both kinds of border.
        monkeypatch.setattr(pairs, "ROWS_PER_BLOCK", 100)
        monkeypatch.setattr(pairs, "COLUMNS_PER_BLOCK", 150)
        new = duplicate_pass(ctx, threshold=THRESHOLD, batch_size=50)
    finally:
        store.close()

    _assert_same(new, old)
    sizes = sorted(len(g.paths) for g in new.groups)
    assert len(new.groups) > 20 and max(sizes) >= 6 and 3 in sizes  # the data is what it claims
    assert new.kept_apart and {new.kept_apart[0].a, new.kept_apart[0].b} & {paths[400], paths[402]}


def _brute_force(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    scores = vectors @ vectors.T
    i, j = np.nonzero(np.triu(scores >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize(("batch", "rows", "columns"), [(7, 20, 33), (64, 20, 1000), (300, 4096, 4096)])
def test_every_pair_at_the_threshold_is_found_once_whatever_the_blocks(
    tmp_path: Path, batch: int, rows: int, columns: int
) -> None:
    """Against the full score matrix: batches smaller and larger than a row block, column blocks
    that do not divide n, one block for everything."""
    vectors = _collection(301, seed=3)
    with pairs.VectorFile(tmp_path) as stored:
        for start in range(0, len(vectors), batch):
            stored.append(
                list(range(start, min(start + batch, len(vectors)))), vectors[start : start + batch]
            )
        found: list[tuple[int, int]] = []
        covered = []
        for start, stop, block in pairs.close_pairs(stored, THRESHOLD, rows=rows, columns=columns):
            covered.append((start, stop))
            assert ((start <= block.first) & (block.first < stop) & (block.first < block.second)).all()
            assert block.scores == pytest.approx(
                np.einsum("ij,ij->i", vectors[block.first], vectors[block.second]), abs=1e-5
            )
            found += zip(block.first.tolist(), block.second.tolist(), strict=True)

    assert len(found) == len(set(found)) and set(found) == _brute_force(vectors, THRESHOLD)
    assert covered[0][0] == 0 and covered[-1][1] == len(vectors)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert all(stop - start <= max(rows, batch) for start, stop in covered)


class _WatchedStore(MilvusVectorStore):
    """A real Milvus Lite store that notes, while the pass reads it, how many BLAS threads numpy may
    use and which deleted files the process holds open."""

    blas_threads: list[int]
    scratch: list[list[str]]

    def get_vectors(self, ids: Iterable[int]) -> dict[int, Vector]:
        self.blas_threads.append(min(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"))
        self.scratch.append(_deleted_files_open())
        return super().get_vectors(ids)


def _deleted_files_open() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the descriptor listdir itself used, closed since
            continue
        if link.endswith(" (deleted)"):
            found.append(link)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_the_pass_uses_every_cpu_for_blas_and_scratch_space_where_it_is_told(
    catalog: SQLiteCatalog, tmp_path: Path
) -> None:
    if not [p for p in threadpool_info() if p["user_api"] == "blas"]:
        pytest.fail("numpy reports no BLAS thread pool: nothing to size")
    store = _WatchedStore(str(tmp_path / "vectors.db"), dimension=DIMENSION)
    store.blas_threads, store.scratch = [], []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        fill_synthetic(catalog, store, _collection(120, seed=1))
        # As in a process that runs the model: one BLAS thread (extractor._use_the_cpus_we_may_run_on).
        with threadpool_limits(limits=1, user_api="blas"):
            result = duplicate_pass(
                _context(catalog, store), threshold=THRESHOLD, batch_size=50, scratch_dir=scratch
            )
            after = min(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    finally:
        store.close()

    assert result.groups
    assert store.blas_threads == [cpus_we_may_run_on()] * 3  # 120 vectors in batches of 50
    assert after == 1  # given back when the pass ends
    # The vectors sit in one unlinked file in the scratch directory while the pass reads, then it is gone.
    assert all(len([f for f in seen if f.startswith(f"{scratch}/")]) == 1 for seen in store.scratch)
    assert not [f for f in _deleted_files_open() if f.startswith(f"{scratch}/")]
    assert not list(scratch.iterdir())


def test_a_filter_groups_only_the_files_it_admits(catalog: SQLiteCatalog, tmp_path: Path) -> None:
    """``duplicates --under/--since/--until``: the files outside take no part, so a group loses them
    and a chain through one of them breaks; exact groups are cut the same way."""
    rng = np.random.default_rng(11)
    vectors = _unit(rng.standard_normal((8, DIMENSION)))
    vectors[1] = vectors[0]  # 0 and 1: the same bytes (one hash), 2 a look-alike of both
    vectors[2] = _unit(vectors[0] + rng.standard_normal(DIMENSION) * (0.2 / DIMENSION**0.5))
    vectors[4], vectors[5] = _arc(vectors[3], rng, (24.0, 48.0))  # a chain 3 ~ 4 ~ 5; 3 and 5 far apart
    where_of = ["in", "in", "out", "in", "out", "in", "in", "out"]
    paths = [f"/lib/{where}/{row}.jpg" for row, where in enumerate(where_of)]
    hashes = [f"{max(row, 1):032x}" for row in range(len(vectors))]
    store = MilvusVectorStore(str(tmp_path / "vectors.db"), dimension=DIMENSION)
    try:
        fill_synthetic(catalog, store, vectors, paths, hashes)
        ctx = _context(catalog, store)

        def groups(where: SearchFilter | None) -> list[tuple[str, list[str]]]:
            return [(g.kind, g.paths) for g in duplicate_pass(ctx, threshold=THRESHOLD, where=where).groups]

        everything = groups(None)
        inside = groups(SearchFilter(("/lib/in",)))
        # Files modified on days 1 to 4: 1, 2, 3, 4.
        dated = groups(SearchFilter(since_ns=DAY_NS, until_ns=5 * DAY_NS))
    finally:
        store.close()

    p = paths
    assert everything == [("similar", [p[0], p[1], p[2]]), ("similar", sorted([p[3], p[4], p[5]]))]
    assert inside == [("exact", [p[0], p[1]])]  # 2 is outside; 3 and 5 were linked only by 4
    assert dated == [("similar", [p[1], p[2]]), ("similar", [p[3], p[4]])]
    assert [g.paths for g in find_exact_duplicates(catalog, SearchFilter(("/lib/in",)))] == [[p[0], p[1]]]
    assert find_exact_duplicates(catalog, SearchFilter(("/lib/out",))) == []
    assert [g.paths for g in find_exact_duplicates(catalog)] == [[p[0], p[1]]]
