"""The Milvus Lite vector store, for real, in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.services.vectors import MilvusVectorStore, milvus_string, stored_path


def _unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).random(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusVectorStore]:
    vectors = MilvusVectorStore(str(tmp_path / "vectors.db"), dimension=8)
    yield vectors
    vectors.close()


def test_upsert_is_idempotent_and_delete_removes(store: MilvusVectorStore) -> None:
    items = [(i, f"/p/{i}.jpg", _unit(i)) for i in range(5)]
    store.upsert(items)
    store.upsert(items)
    assert store.count() == 5

    store.delete([1, 3])
    store.delete([1, 3])

    assert store.count() == 4 - 1
    assert set(store.get_vectors(range(5))) == {0, 2, 4}


def test_search_ranks_by_cosine(store: MilvusVectorStore) -> None:
    store.upsert([(i, f"/p/{i}.jpg", _unit(i)) for i in range(20)])

    [hits] = store.search([_unit(7)], k=5)

    assert hits[0].id == 7 and hits[0].path == "/p/7.jpg"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_concurrent_writers_lose_nothing(store: MilvusVectorStore) -> None:
    # Regression: Milvus Lite's WAL raced under concurrent upserts and leaked a file (a
    # ResourceWarning, which this suite turns into a failure).
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda i: store.upsert([(i, f"/p/{i}", _unit(i))]), range(48)))
    assert store.count() == 48


def test_reopened_store_serves_searches(tmp_path: Path) -> None:
    first = MilvusVectorStore(str(tmp_path / "v.db"), dimension=8)
    first.upsert([(1, "/p/1.jpg", _unit(1))])
    first.close()
    second = MilvusVectorStore(str(tmp_path / "v.db"), dimension=8)
    try:
        assert second.search([_unit(1)], k=1)[0][0].id == 1
    finally:
        second.close()


_PATH_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=30
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_PATH_TEXT)
def test_any_path_is_escaped_safely_in_filter_expressions(store: MilvusVectorStore, name: str) -> None:
    path = "/photos/" + name
    key = abs(hash(path)) % (2**62)
    store.upsert([(key, path, _unit(3)), (key + 1, path + "x", _unit(4))])
    try:
        assert store.ids_for_path(path) == [key]
    finally:
        store.delete([key, key + 1])


def test_escaping_covers_the_characters_that_break_expressions() -> None:
    assert milvus_string('a"b') == '"a\\"b"'
    assert milvus_string("a\\b") == '"a\\\\b"'
    assert milvus_string("a\nb'c") == '"a\\nb\'c"'


def test_undecodable_bytes_are_stored_visibly_not_replaced() -> None:
    assert stored_path("/p/caf\udce9.jpg") == "/p/caf\\xe9.jpg"


@pytest.mark.parametrize("index_type", ["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ", "AUTOINDEX"])
def test_every_index_type_milvus_lite_accepts_finds_exact_copies(tmp_path: Path, index_type: str) -> None:
    vectors = [_unit(seed, dim=32) for seed in range(300)]
    store = MilvusVectorStore(str(tmp_path / "v.db"), dimension=32, index_type=index_type)
    try:
        store.upsert([(i, f"/p/{i}", v) for i, v in enumerate(vectors)])
        results = store.search([vectors[17], vectors[250]], k=3)
    finally:
        store.close()
    assert [hits[0].id for hits in results] == [17, 250]
