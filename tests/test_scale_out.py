"""Beyond one machine, on a real Milvus server: several watchers feeding one collection, and a server
that goes away mid-ingest and comes back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgwatch.cli import EXIT_CONFIG
from imgwatch.config import Settings
from imgwatch.jobs import repair_vectors
from imgwatch.search import search_files
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from tests.conftest import (
    MilvusServer,
    _server_python,
    index,
    start_milvus_server,
    stop_milvus_server,
    write_photo,
)
from tests.harness import RunningDaemon, imgwatch_cli, wait_until
from tests.milvus_server import SOCKET_NAME, TOKEN

pytestmark = pytest.mark.milvus_server


@pytest.fixture
def shared(milvus_server: MilvusServer, tmp_path: Path) -> Iterator[Callable[[str], Settings]]:
    """Settings for watcher NAME: its own data dir (catalog), one server collection for all."""
    collection = f"shared_{uuid.uuid4().hex}"

    def node(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / f"data-{name}",
            weights="random:0",
            batch_size=8,
            milvus_uri=milvus_server.uri,
            milvus_token=milvus_server.token,
            collection=collection,
            node=name,
        )

    yield node
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.token or "")
    try:
        client.drop_collection(collection)
    finally:
        client.close()


def test_two_watchers_share_a_collection_without_touching_each_other(
    shared: Callable[[str], Settings], extractor: VGG16Extractor, tmp_path: Path
) -> None:
    roots = {name: tmp_path / f"photos-{name}" for name in ("a", "b")}
    for offset, (name, root) in enumerate(roots.items()):
        for seed in range(4):
            write_photo(root / f"{name}{seed}.jpg", 100 * offset + seed)
    for name, root in roots.items():
        with open_context(shared(name), command="test", extractor=extractor) as ctx:
            assert index(ctx, root).added == 4
            assert ctx.vectors.count() == 4  # its own entities only

    # Either finds the other's files, labelled with the node that indexed them.
    with open_context(shared("a"), command="test", extractor=extractor) as ctx:
        [result] = search_files([str(roots["b"] / "b2.jpg")], ctx, k=3)
        assert (result.matches[0].path, result.matches[0].node) == (str(roots["b"] / "b2.jpg"), "b")
        [own] = search_files([str(roots["a"] / "a1.jpg")], ctx, k=1)
        assert (own.matches[0].path, own.matches[0].node) == (str(roots["a"] / "a1.jpg"), None)
        # Its reconcile sees no strays in the other's entities, and deletes only its own.
        assert repair_vectors(ctx)["stray_vectors_deleted"] == 0
    (roots["a"] / "a1.jpg").unlink()
    with open_context(shared("a"), command="test", extractor=extractor) as ctx:
        summary = index(ctx, roots["a"])
        assert summary.removed == 1
        assert ctx.vectors.count() == 3
    with open_context(shared("b"), command="test", extractor=extractor) as ctx:
        assert ctx.vectors.count() == 4
        assert len(ctx.vectors.get_vectors(r.id for r in ctx.catalog.under(str(roots["b"])))) == 4
        [result] = search_files([str(roots["a"] / "a2.jpg")], ctx, k=1)
        assert (result.matches[0].path, result.matches[0].node) == (str(roots["a"] / "a2.jpg"), "a")

    # A plain search with no catalog of its own sees every node's files.
    plain = shared("x").replace(node=None, data_dir=tmp_path / "data-plain")
    with open_context(plain, command="search", extractor=extractor) as ctx:
        [result] = search_files([str(roots["b"] / "b0.jpg")], ctx, k=8)
        assert {m.node for m in result.matches} == {"a", "b"}
        assert len(result.matches) == 7


def test_two_daemons_feed_one_collection_and_each_searches_both(
    shared: Callable[[str], Settings], daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    daemons = {}
    for offset, name in enumerate(("a", "b")):
        settings = shared(name)
        root = tmp_path / f"photos-{name}"
        for seed in range(3):
            write_photo(root / f"{name}{seed}.jpg", 300 + 10 * offset + seed)
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'milvus_uri = "{settings.milvus_uri}"\nmilvus_token = "{settings.milvus_token}"\n'
            f'collection = "{settings.collection}"\nnode = "{name}"\n'
        )
        daemons[name] = daemon_factory(root, data_dir=settings.data_dir, extra=("--config", str(config)))
    for daemon in daemons.values():
        daemon.idle()

    for name, daemon in daemons.items():
        other = "b" if name == "a" else "a"
        hits = daemon.search(tmp_path / f"photos-{other}" / f"{other}1.jpg", k=1)
        assert hits == [
            {
                "path": str(tmp_path / f"photos-{other}" / f"{other}1.jpg"),
                "score": pytest.approx(1.0, abs=1e-3),
                "node": other,
            }
        ]

    (tmp_path / "photos-a" / "a0.jpg").unlink()
    wait_until(lambda: daemons["a"].status()["vectors"] == 2, timeout=30)
    assert daemons["b"].status()["vectors"] == 3
    found = daemons["b"].paths_found(tmp_path / "photos-b" / "b0.jpg", k=10)
    assert str(tmp_path / "photos-a" / "a0.jpg") not in found
    assert len(found) == 5
    for daemon in daemons.values():
        assert daemon.stop() == 0


def test_a_server_restart_mid_ingest_loses_and_duplicates_nothing(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    python = _server_python()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server = start_milvus_server(python, server_dir)
    try:
        uri = f"unix:{server_dir / SOCKET_NAME}"
        config = tmp_path / "imgwatch.toml"
        config.write_text(f'milvus_uri = "{uri}"\nmilvus_token = "{TOKEN}"\n')
        root = tmp_path / "photos"
        root.mkdir()
        daemon = daemon_factory(root, extra=("--config", str(config)))
        for seed in range(12):
            write_photo(root / f"{seed:02d}.jpg", 500 + seed, (200, 150))
        wait_until(lambda: daemon.status()["outcomes"].get("added", 0) >= 2, timeout=60, interval=0.05)
        stop_milvus_server(server)
        for seed in range(12, 20):
            write_photo(root / f"{seed:02d}.jpg", 500 + seed, (200, 150))
        server = start_milvus_server(python, server_dir)
        status = wait_until(
            lambda: (s := daemon.status())["vectors"] == 20 and not s["journal"]["pending"] and s,
            timeout=240,
            interval=0.5,
        )
        assert status["retries"] >= 1  # work waited and was retried, not dropped
        assert daemon.stop() == 0
        report = json.loads(imgwatch_cli(daemon.data_dir, "status", "--json", "--config", str(config)).stdout)
        assert report["files"] == {"indexed": 20, "pending": 0, "failed": 0}
        assert report["vectors"] == 20
    finally:
        stop_milvus_server(server)


def test_a_token_the_server_stops_accepting_stops_the_daemon_instead_of_retrying(
    milvus_server: MilvusServer,
    server_user: tuple[str, str],
    daemon_factory: Callable[..., RunningDaemon],
    tmp_path: Path,
) -> None:
    """A refused token is not an outage: no waiting fixes it. The daemon says which setting to fix and
    exits with EXIT_CONFIG, the status systemd does not restart; the work it could not finish stays
    in the journal for the next start."""
    from pymilvus import MilvusClient

    user, password = server_user
    admin = MilvusClient(uri=milvus_server.uri, token=milvus_server.token or "")
    collection = f"test_{uuid.uuid4().hex}"
    config = tmp_path / "imgwatch.toml"

    def configure(password: str) -> None:
        config.write_text(
            f'milvus_uri = "{milvus_server.uri}"\nmilvus_token = "{user}:{password}"\n'
            f'collection = "{collection}"\n'
        )

    root = tmp_path / "photos"
    write_photo(root / "first.jpg", 700, (200, 150))
    try:
        configure(password)
        daemon = daemon_factory(root, extra=("--config", str(config)))
        wait_until(lambda: daemon.status()["vectors"] == 1, timeout=120)
        admin.update_password(user, password, "second-password")
        wait_until(lambda: _refused(milvus_server.uri, f"{user}:{password}"), timeout=30, interval=0.5)
        write_photo(root / "second.jpg", 701, (200, 150))

        # EX_CONFIG, which the systemd units exempt from Restart=on-failure: no restart loop.
        assert daemon.process.wait(timeout=120) == EXIT_CONFIG
        log = daemon.log.read_text()
        assert f"the Milvus server at {milvus_server.uri} refused the token" in log
        assert "IMGWATCH_MILVUS_TOKEN or as `milvus_token` in the config file" in log
        assert "retrying in" not in log

        configure("second-password")
        again = daemon_factory(root, extra=("--config", str(config)))
        wait_until(lambda: (s := again.status())["vectors"] == 2 and not s["journal"]["pending"], timeout=120)
        assert again.stop() == 0
    finally:
        admin.drop_collection(collection)
        admin.close()


def _refused(uri: str, token: str) -> bool:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, token=token)
    except Exception:  # noqa: BLE001 - refused, as awaited
        return True
    try:
        client.list_collections()
    except Exception:  # noqa: BLE001 - refused, as awaited
        return True
    finally:
        client.close()
    return False
