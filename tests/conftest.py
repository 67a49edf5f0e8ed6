"""Real services on tmp_path: SQLite migrated by Alembic, Milvus Lite (and a real Milvus server where
available), VGG16 with seeded random weights."""

from __future__ import annotations

import io
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from starlette.types import ASGIApp

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.indexer import IndexSummary, normalise_root, plan, run_plan
from imgwatch.samples import photo
from imgwatch.scan import ScanRules
from imgwatch.services.abc import FileState
from imgwatch.services.build import open_context
from imgwatch.services.catalog import FILES, SQLiteCatalog
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec
from imgwatch.services.vectors import MilvusVectorStore
from imgwatch.web.server import HttpServer, bind_tcp
from tests import milvus_server as launcher

# The daemon harness (its `daemon_factory` fixture) for every test module.
pytest_plugins = ["tests.harness"]

WEIGHTS = "random:0"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def extractor() -> Iterator[VGG16Extractor]:
    """One real VGG16 for the whole session (loading it costs seconds); contexts adopt it."""
    from tests.harness import SUITE_PRECISION

    model = VGG16Extractor(WeightsSpec.parse(WEIGHTS), precision=SUITE_PRECISION, batch_size=8)
    yield model
    model.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", weights=WEIGHTS, batch_size=8)


OpenContext = Callable[..., AbstractContextManager[Context]]


@pytest.fixture
def open_ctx(settings: Settings, extractor: VGG16Extractor) -> OpenContext:
    def opener(**overrides: object) -> AbstractContextManager[Context]:
        return open_context(settings, command="test", extractor=extractor, **overrides)  # type: ignore[arg-type]

    return opener


@pytest.fixture
def ctx(open_ctx: OpenContext) -> Iterator[Context]:
    with open_ctx() as context:
        yield context


def index(ctx: Context, *roots: Path | str, rules: ScanRules | None = None) -> IndexSummary:
    """What ``imgwatch index`` does, in-process, on the given context."""
    normalised = [normalise_root(str(r)) for r in roots]
    return run_plan(plan(normalised, rules or ScanRules(), ctx), ctx, workers=12)


def jpeg_bytes(image: Image.Image, quality: int = 90, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def serve(app: ASGIApp, host: str = "127.0.0.1") -> HttpServer:
    """``app`` on a free port of ``host``, served by uvicorn in a thread, as the daemon serves it."""
    server = HttpServer(app, bind_tcp(host, 0, "test"), "imgwatch-test-http")
    server.start()
    return server


def own_address() -> str | None:
    """A non-loopback address of this machine (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def stub_page_app(token: str | None, max_upload: int) -> ASGIApp:
    """The search page with plain callables behind it (every upload finds ``/p/a.jpg``), for tests
    of the HTTP layer itself."""
    from imgwatch.search import Match, QueryResult
    from imgwatch.thumbnails import ThumbnailNotFoundError
    from imgwatch.web import create_app
    from imgwatch.web.page import PageSurface, SearchPageBackend, SearchPageConfig

    def thumbnail(ref: int | str) -> bytes:
        raise ThumbnailNotFoundError(str(ref))

    backend = SearchPageBackend(
        search_image=lambda _data, _k: QueryResult("upload", [Match("/p/a.jpg", 0.9)]),
        search_like=lambda path, _k: QueryResult(path, []),
        thumbnail=thumbnail,
        path_of=lambda _id: None,
    )
    return create_app(page=PageSurface(SearchPageConfig("127.0.0.1", 0, token, max_upload), backend))


def write_photo(path: Path, seed: int, size: tuple[int, int] = (480, 360)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(photo(seed, size)))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of eight distinct photos, two of them in a subfolder."""
    root = tmp_path / "photos"
    for seed in range(6):
        write_photo(root / f"photo{seed}.jpg", seed)
    for seed in (6, 7):
        write_photo(root / "trip" / f"photo{seed}.jpg", seed)
    return root


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread of ours running (watchdog's conftest does the same)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and t.name.startswith("imgwatch")
    ]
    for thread in leaked:
        thread.join(timeout=2)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"


# --- a real browser (the search page's tests) -------------------------------------------------------


def _browser_unavailable(reason: str) -> None:
    """Skip locally; in CI (``CI=true``) the browser test is mandatory, so fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser test cannot run: {reason}", pytrace=False)
    pytest.skip(f"headless browser not available: {reason}")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, through its chromedriver (no download: Selenium Manager is bypassed)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _browser_unavailable("selenium is not installed (pip install -e '.[test]')")
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _browser_unavailable("chromium or chromedriver not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root with its sandbox
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except Exception as e:  # noqa: BLE001 - any start-up failure is "no browser here"
        _browser_unavailable(f"chromium did not start: {e}")
    try:
        yield driver
    finally:
        driver.quit()


# --- Milvus: every store test runs on Milvus Lite and on a real Milvus server (issue 8) -----------------
# The server variant needs one of:
ENV_TEST_MILVUS_URI = "IMGWATCH_TEST_MILVUS_URI"
"""A Milvus server that is already running (with ``IMGWATCH_TEST_MILVUS_TOKEN`` if it wants one)."""
ENV_TEST_MILVUS_TOKEN = "IMGWATCH_TEST_MILVUS_TOKEN"
ENV_TEST_MILVUS_PYTHON = "IMGWATCH_TEST_MILVUS_PYTHON"
"""The Python of a virtualenv holding ``milvus==2.3.5``; default ``.milvus-venv/bin/python`` (``.ci/run``
makes it). The session then starts its own server in a private network namespace
(``tests/milvus_server.py``)."""
SERVER_START_TIMEOUT = 180.0


@dataclass(frozen=True)
class MilvusTarget:
    """Where a test's vectors go: a Milvus Lite file or a collection of its own on a server."""

    kind: str
    """``lite`` or ``server``."""
    uri: str
    token: str | None = None
    collection: str = "imgwatch"

    def open(self, dimension: int = 8, **kwargs: Any) -> MilvusVectorStore:
        return MilvusVectorStore(
            self.uri, dimension=dimension, collection=self.collection, token=self.token, **kwargs
        )


@dataclass(frozen=True)
class MilvusServer:
    uri: str
    token: str | None


def _server_unavailable(reason: str) -> None:
    """Skip locally; in CI (``CI=true``) the server suite is mandatory, so fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the Milvus server is unavailable: {reason}", pytrace=False)
    pytest.skip(f"Milvus server not available: {reason}")


def stop_milvus_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher (PID 1 of its namespace); SIGKILL ``unshare`` if that does not end it.

    ``unshare --fork`` blocks SIGTERM and SIGINT itself (util-linux 2.38), so the signal goes to its child.
    """
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    if proc.poll() is None and children.exists():
        for pid in children.read_text().split():
            os.kill(int(pid), signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()  # --kill-child takes the launcher, and with it the whole namespace, down too
        proc.wait(timeout=15)


def _server_python() -> Path:
    """The Python that runs the server; skips (or fails in CI) when the server cannot run here."""
    python = Path(os.environ.get(ENV_TEST_MILVUS_PYTHON) or REPO / ".milvus-venv" / "bin" / "python")
    if not python.exists():
        _server_unavailable(
            f"{python} does not exist; make it with `python3 -m venv .milvus-venv && "
            f".milvus-venv/bin/pip install milvus==2.3.5` (as .ci/run does), set {ENV_TEST_MILVUS_PYTHON}, "
            f"or point {ENV_TEST_MILVUS_URI} at a running server"
        )
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        _server_unavailable(f"{', '.join(missing)} not found (util-linux, iproute2)")
    return python


def start_milvus_server(python: Path, data: Path) -> subprocess.Popen[bytes]:
    """Start a server on ``data`` (its files and socket) and wait until it answers.

    Its own network namespace (only loopback, so nothing of it is reachable from outside) and PID
    namespace (it cannot outlive its launcher); see tests/milvus_server.py.
    """
    (data / launcher.READY_NAME).unlink(missing_ok=True)
    command = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        command.append("--map-root-user")  # an unprivileged user may still own a user namespace
    command += ["sh", "-c", 'ip link set lo up && exec "$0" "$1" "$2"']
    command += [str(python), launcher.__file__, str(data)]
    log_path = data.parent / f"{data.name}-server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not (data / launcher.READY_NAME).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_milvus_server(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            _server_unavailable(f"the server did not start (exit status {proc.poll()}):\n{tail}")
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A real Milvus server for the session: the one named by the environment, or our own."""
    if uri := os.environ.get(ENV_TEST_MILVUS_URI):
        yield MilvusServer(uri, os.environ.get(ENV_TEST_MILVUS_TOKEN))
        return
    python = _server_python()
    data = tmp_path_factory.mktemp("milvus-server")
    proc = start_milvus_server(python, data)
    try:
        yield MilvusServer(f"unix:{data / launcher.SOCKET_NAME}", launcher.TOKEN)
    finally:
        stop_milvus_server(proc)
        # The unpacked server (250 MB) and its data; the logs stay beside the other temporary files.
        for bulky in ("bin", "data"):
            shutil.rmtree(data / bulky, ignore_errors=True)


@pytest.fixture
def server_user(milvus_server: MilvusServer) -> Iterator[tuple[str, str]]:
    """``(user, password)`` of a user of its own on the session's server, with the admin role: for
    tests that change its password (the session's token must keep working for every other test)."""
    from pymilvus import MilvusClient

    if not milvus_server.token:
        pytest.skip("this server has no authorisation")
    admin = MilvusClient(uri=milvus_server.uri, token=milvus_server.token)
    user, password = f"u{uuid.uuid4().hex[:16]}", "first-password"
    admin.create_user(user, password)
    admin.grant_role(user, "admin")
    # The server's proxies learn of the grant a moment later (measured: 2.6 s on 2.3.5); until then
    # the user may connect but not create a collection.
    probe = MilvusClient(uri=milvus_server.uri, token=f"{user}:{password}")
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                probe.create_collection(f"probe_{user}", dimension=8)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        probe.drop_collection(f"probe_{user}")
    finally:
        probe.close()
    try:
        yield user, password
    finally:
        admin.drop_user(user)
        admin.close()


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.milvus_server)])
def milvus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MilvusTarget]:
    """Each store test runs twice, as APScheduler runs its data-store tests on every store."""
    if request.param == "lite":
        yield MilvusTarget("lite", str(tmp_path / "vectors.db"))
        return
    server: MilvusServer = request.getfixturevalue("milvus_server")
    # A collection of its own per test: the server outlives every test.
    target = MilvusTarget("server", server.uri, server.token, f"test_{uuid.uuid4().hex}")
    yield target
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, token=server.token or "")
    try:
        client.drop_collection(target.collection)
    finally:
        client.close()


@pytest.fixture
def store(milvus: MilvusTarget) -> Iterator[MilvusVectorStore]:
    """A vector store on ``milvus`` (Lite and server), closed after the test."""
    vectors = milvus.open()
    yield vectors
    vectors.close()


def unit_vector(seed: int, dim: int = 8) -> np.ndarray:
    """A seeded random unit vector, for store tests that need no model."""
    vector = np.random.default_rng(seed).random(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def milvus_settings(tmp_path: Path, milvus: MilvusTarget) -> Settings:
    """``settings``, with the vectors on whichever Milvus this run of the test is for."""
    if milvus.kind == "lite":
        return Settings(data_dir=tmp_path / "data", weights=WEIGHTS, batch_size=8)
    return Settings(
        data_dir=tmp_path / "data",
        weights=WEIGHTS,
        batch_size=8,
        milvus_uri=milvus.uri,
        milvus_token=milvus.token,
        collection=milvus.collection,
    )


@pytest.fixture
def milvus_ctx(milvus_settings: Settings, extractor: VGG16Extractor) -> Iterator[Context]:
    """``ctx`` on Lite and on a server."""
    with open_context(milvus_settings, command="test", extractor=extractor) as context:
        yield context


def fill_synthetic(
    catalog: SQLiteCatalog,
    store: MilvusVectorStore,
    vectors: np.ndarray,
    paths: list[str] | None = None,
    hashes: list[str] | None = None,
    *,
    first_id: int = 1,
    signature: str = "synthetic",
) -> list[str]:
    """Indexed rows with these vectors, written straight into the catalog and the store (as
    ``imgwatch index`` leaves them): row ``i`` is file id ``first_id + i``, modified ``i`` days
    after the epoch."""
    keys = range(first_id, first_id + len(vectors))
    paths = paths or [f"/synthetic/{key:05d}.jpg" for key in keys]
    hashes = hashes or [f"{key:032x}" for key in keys]
    items = list(zip(keys, paths, vectors, strict=True))
    for start in range(0, len(items), 500):
        store.upsert(items[start : start + 500])
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "id": key,
            "path": path.encode(),
            "size": 1,
            "mtime_ns": (key - first_id) * 86_400 * 10**9,
            "content_hash": hashes[key - first_id],
            "state": FileState.INDEXED.value,
            "has_vector": True,
            "signature": signature,
            "created_at": now,
            "updated_at": now,
            "indexed_at": now,
        }
        for key, path in zip(keys, paths, strict=True)
    ]
    with catalog.engine.begin() as conn:
        conn.execute(sa.insert(FILES), rows)
    return paths
