"""The vector store, for real: Milvus Lite in tmp_path, and a real Milvus server (see conftest.milvus)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgwatch.config import ENV_CONFIG, ENV_DATA_DIR, ENV_MILVUS_TOKEN, ENV_MILVUS_URI, load_settings
from imgwatch.errors import ImgwatchError, StoreAuthError, StoreUnavailableError
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.services.vectors import (
    PATH_MAX_BYTES,
    MilvusVectorStore,
    milvus_string,
    open_connections,
    stored_path,
)
from tests.conftest import WEIGHTS, MilvusServer, MilvusTarget
from tests.conftest import unit_vector as _unit


def test_upsert_is_idempotent_and_delete_removes(store: MilvusVectorStore) -> None:
    items = [(i, f"/p/{i}.jpg", _unit(i)) for i in range(5)]
    store.upsert(items)
    store.upsert(items)
    assert store.count() == 5

    store.delete([1, 3])
    store.delete([1, 3])

    assert store.count() == 4 - 1
    assert set(store.get_vectors(range(5))) == {0, 2, 4}


def test_a_count_is_exact_after_every_write_and_reused_only_when_asked(tmp_path: Path) -> None:
    """Milvus Lite counts by walking every entity, and a daemon's status is polled: a count is reused
    until something writes (through any store on that collection in this process), or for max_age."""
    uri = str(tmp_path / "vectors.db")
    store = MilvusVectorStore(uri, dimension=8)
    other = MilvusVectorStore(uri, dimension=8)
    try:
        store.upsert([(i, f"/p/{i}.jpg", _unit(i)) for i in range(5)])
        assert store.count() == 5
        other.upsert([(5, "/p/5.jpg", _unit(5))])
        assert store.count() == 6
        store.rename([(5, "/q/5.jpg")])
        store.delete([0])
        assert store.count() == 5
        other.delete([1])
        # A busy daemon's status: a count younger than max_age is good enough...
        assert store.count(max_age=3600) == 5
        # ...but without it, the count is exact.
        assert store.count() == 4 == other.count()
        # A fresh store on the file agrees.
        store.close()
        other.close()
        store = other = MilvusVectorStore(uri, dimension=8)
        assert store.count() == 4
    finally:
        store.close()
        other.close()


def test_a_move_rewrites_the_entity_only_where_other_watchers_read_its_path(tmp_path: Path) -> None:
    """An entity's path is read only by the other watchers of a shared collection (this watcher's
    results take paths from its catalog): alone in the collection a move costs the store nothing."""
    uri = str(tmp_path / "vectors.db")
    alone = MilvusVectorStore(uri, dimension=8, collection="alone")
    shared = MilvusVectorStore(uri, dimension=8, collection="shared", node_id=3, node="laptop")
    try:
        for store in (alone, shared):
            store.upsert([(1, "/old/1.jpg", _unit(1))])
            store.rename([(1, "/new/1.jpg")])
        assert alone.ids_for_path("/old/1.jpg") == [1] and alone.ids_for_path("/new/1.jpg") == []
        assert shared.ids_for_path("/new/1.jpg") == [1] and shared.ids_for_path("/old/1.jpg") == []
        assert np.allclose(shared.get_vectors([1])[1], _unit(1))
    finally:
        alone.close()
        shared.close()


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


def test_reopened_store_serves_searches(milvus: MilvusTarget) -> None:
    first = milvus.open()
    first.upsert([(1, "/p/1.jpg", _unit(1))])
    first.close()
    second = milvus.open()
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
def test_every_index_type_milvus_accepts_finds_exact_copies(milvus: MilvusTarget, index_type: str) -> None:
    vectors = [_unit(seed, dim=32) for seed in range(300)]
    if milvus.kind == "server" and index_type == "HNSW_SQ":
        # Measured: Milvus 2.3.5 (the CI server) predates HNSW_SQ (Milvus 2.5); Milvus Lite 3.2 has it.
        from pymilvus import MilvusException

        with pytest.raises(MilvusException, match="invalid index type: HNSW_SQ"):
            milvus.open(dimension=32, index_type=index_type)
        return
    store = milvus.open(dimension=32, index_type=index_type)
    try:
        store.upsert([(i, f"/p/{i}", v) for i, v in enumerate(vectors)])
        results = store.search([vectors[17], vectors[250]], k=3)
    finally:
        store.close()
    assert [hits[0].id for hits in results] == [17, 250]


@pytest.mark.parametrize(
    ("index_type", "params"), [("IVF_FLAT", {"nlist": 24}), ("HNSW", {"M": 8, "efConstruction": 40})]
)
def test_the_index_parameters_reach_milvus(
    milvus: MilvusTarget, index_type: str, params: dict[str, int]
) -> None:
    """Milvus Lite reads only a JSON "params" key, which pymilvus does not send by itself: Lite built
    every IVF index with 128 lists, whatever the collection's size asked for."""
    from pymilvus import MilvusClient

    store = milvus.open(dimension=16, index_type=index_type, index_params=params)
    client = MilvusClient(uri=milvus.uri, token=milvus.token or "")
    try:
        [name] = client.list_indexes(milvus.collection)
        described = client.describe_index(milvus.collection, name)
    finally:
        client.close()
        store.close()
    built = described.get("params", described)  # Lite nests them; a server lists them flat
    assert {key: int(built[key]) for key in params} == params, described


# --- What a real server does differently (issue 8); each runs on Lite too -------------------------------


def _precreate(milvus: MilvusTarget, consistency_level: str) -> None:
    """Create the test's collection as another client might have: same schema, another consistency."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=milvus.uri, token=milvus.token or "")
    try:
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=8)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        client.create_collection(
            milvus.collection, schema=schema, index_params=index, consistency_level=consistency_level
        )
    finally:
        client.close()


@pytest.mark.parametrize("consistency_level", ["Strong", "Bounded"])
def test_every_read_sees_the_writes_just_made(milvus: MilvusTarget, consistency_level: str) -> None:
    # The pipeline reads right after it writes (a copy reuses the vector it just stored; reconcile
    # compares all ids). On a server a Bounded collection answered get() and the query iterator
    # without the last writes until the store asked for its own level on every read; and Session
    # alone did not see a delete (pymilvus keeps no timestamp of one).
    _precreate(milvus, consistency_level)
    store = milvus.open()
    try:
        for i in range(5):
            key, path = 100 + i, f"/r/{i}.jpg"
            store.upsert([(key, path, _unit(key))])
            assert key in store.get_vectors([key])
            assert store.search([_unit(key)], k=1)[0][0].id == key
            assert store.ids_for_path(path) == [key]
            assert store.all_ids() == {key} and store.count() == 1
            store.delete([key])
            assert store.get_vectors([key]) == {}
            assert store.all_ids() == set() and store.count() == 0
    finally:
        store.close()


_WRITER = """
import sys
import numpy as np
from imgwatch.services.vectors import MilvusVectorStore
uri, token, collection = sys.argv[1:4]
store = MilvusVectorStore(uri, dimension=8, collection=collection, token=token or None)
for line in sys.stdin:
    key = int(line)
    vector = np.random.default_rng(key).random(8).astype(np.float32)
    store.upsert([(key, f"/w/{key}.jpg", vector / np.linalg.norm(vector))])
    print(key, flush=True)
store.close()
"""


@pytest.mark.milvus_server
def test_a_store_sees_what_another_process_wrote_just_before_it_read(milvus_server: MilvusServer) -> None:
    # `imgwatch index` in one process, then `imgwatch search` in another: the second must find every
    # file the first stored, though after its first read a store waits only for its own writes
    # (Session: a Strong read waited ~180 ms for the server's clock tick each time). A server only:
    # Milvus Lite admits one process per file.
    milvus = MilvusTarget("server", milvus_server.uri, milvus_server.token, f"test_{uuid.uuid4().hex}")
    milvus.open().close()  # the collection, made before the writer opens it
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, milvus.uri, milvus.token or "", milvus.collection],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        for key in range(1, 6):
            writer.stdin.write(f"{key}\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == str(key)
            reader = milvus.open()  # a new process's store: its first read
            try:
                assert reader.search([_unit(key)], k=1)[0][0].id == key
                assert key in reader.get_vectors([key])
                assert reader.count() == key
            finally:
                reader.close()
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    store = milvus.open()
    try:
        store._client.drop_collection(milvus.collection)
    finally:
        store.close()


def test_path_limit_is_in_bytes_and_a_longer_path_is_clipped_not_refused(store: MilvusVectorStore) -> None:
    exact = "/" + "é" * ((PATH_MAX_BYTES - 1) // 2)  # 65,535 bytes, 32,768 characters
    longer = "/" + "€" * (PATH_MAX_BYTES // 3)  # 65,536 bytes, 21,846 characters: a server refused it
    assert len(exact.encode()) == PATH_MAX_BYTES and len(longer.encode()) == PATH_MAX_BYTES + 1

    store.upsert([(1, exact, _unit(1)), (2, longer, _unit(2)), (3, "/short.jpg", _unit(3))])

    assert store.count() == 3
    assert store.ids_for_path(exact) == [1]
    [hit] = store.search([_unit(2)], k=1)[0][:1]
    assert hit.id == 2 and longer.startswith(hit.path) and len(hit.path.encode()) == PATH_MAX_BYTES - 2


def test_compact_reaches_milvus(milvus: MilvusTarget, store: MilvusVectorStore) -> None:
    store.upsert([(i, f"/c/{i}.jpg", _unit(i)) for i in range(200)])
    store.delete(range(150))

    job = store.compact()["milvus_compaction_job"]

    assert store.count() == 50
    if milvus.kind == "server":  # Milvus Lite 3.2 compacts too, but answers without a job id (0)
        from pymilvus import MilvusClient

        client = MilvusClient(uri=milvus.uri, token=milvus.token or "")
        try:
            deadline = time.monotonic() + 60
            while (state := client.get_compaction_state(job)) != "Completed" and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            client.close()
        assert job > 0 and state == "Completed"


def test_drop_empties_the_collection_and_the_store_keeps_working(milvus: MilvusTarget) -> None:
    store = milvus.open()
    try:
        store.upsert([(i, f"/d/{i}.jpg", _unit(i)) for i in range(10)])
        store.drop()
        assert store.count() == 0 and store.all_ids() == set()
        store.upsert([(42, "/d/42.jpg", _unit(42))])
        assert store.search([_unit(42)], k=3)[0][0].id == 42
    finally:
        store.close()
    reopened = milvus.open()
    try:
        assert reopened.all_ids() == {42}
    finally:
        reopened.close()


def test_a_store_that_fails_to_open_leaves_no_client_open(milvus: MilvusTarget) -> None:
    milvus.open(dimension=8).close()
    before = open_connections(milvus.uri)

    with pytest.raises(ImgwatchError, match="holds 8-d vectors"):
        milvus.open(dimension=16)

    assert open_connections(milvus.uri) == before


@pytest.mark.milvus_server
def test_uri_and_token_from_the_environment_reach_the_server(
    milvus_server: MilvusServer, tmp_path: Path, extractor: VGG16Extractor
) -> None:
    (tmp_path / "config.toml").write_text("")
    environ = {
        ENV_CONFIG: str(tmp_path / "config.toml"),
        ENV_DATA_DIR: str(tmp_path / "data"),
        ENV_MILVUS_URI: milvus_server.uri,
        ENV_MILVUS_TOKEN: milvus_server.token or "",
    }
    collection = f"test_{uuid.uuid4().hex}"
    settings = load_settings({"collection": collection, "weights": WEIGHTS}, environ=environ)
    try:
        with open_context(settings, command="test", extractor=extractor) as ctx:
            ctx.vectors.upsert([(1, "/e/1.jpg", _unit(1, dim=4096))])
            assert ctx.vectors.count() == 1
        if milvus_server.token:  # our own server has authorisation on; a server given by URI may not
            # Refused, not "unavailable": an error that names the setting to fix, and nothing retries.
            for token, said in (("root:x", "refused the token"), ("", "wants a token, and none is set")):
                wrong = load_settings({"collection": collection}, environ=environ | {ENV_MILVUS_TOKEN: token})
                fix = f"{said} .*{ENV_MILVUS_TOKEN} or as `milvus_token`"
                with pytest.raises(StoreAuthError, match=fix) as refused:
                    open_context(wrong, command="test", extractor=extractor).__enter__()
                assert not isinstance(refused.value, StoreUnavailableError)
    finally:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token or "")
        client.drop_collection(collection)
        client.close()


@pytest.mark.milvus_server
def test_a_token_refused_mid_run_is_an_auth_error_not_an_outage(
    milvus_server: MilvusServer, server_user: tuple[str, str]
) -> None:
    """A password changed (or a user dropped) while a store is open: its next call says so, as the
    connect would, instead of a gRPC error that callers take for a server that went away."""
    from pymilvus import MilvusClient

    user, password = server_user
    target = MilvusTarget("server", milvus_server.uri, f"{user}:{password}", f"test_{uuid.uuid4().hex}")
    admin = MilvusClient(uri=milvus_server.uri, token=milvus_server.token or "")
    store = target.open()
    try:
        store.upsert([(1, "/a/1.jpg", _unit(1))])
        admin.update_password(user, password, "second-password")

        def refused() -> bool:
            try:
                store.count()
            except StoreAuthError:
                return True
            return False  # the server may take a moment to drop the old password from its cache

        deadline = time.monotonic() + 30
        while not refused():
            assert time.monotonic() < deadline, "the old password still works after 30 s"
            time.sleep(0.5)
        with pytest.raises(StoreAuthError, match=f"refused the token .*{ENV_MILVUS_TOKEN}"):
            store.upsert([(2, "/a/2.jpg", _unit(2))])
    finally:
        store.close()
        admin.drop_collection(target.collection)
        admin.close()
