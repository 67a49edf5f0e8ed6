"""The HTTP stack itself (FastAPI on uvicorn), surface by surface, over real sockets.

Plain callables stand behind the apps: what is tested here is the HTTP layer (kept-alive connections,
limits while reading, OpenAPI, auth, the socket's permissions, logging); the daemon end to end is
in test_webhook.py and test_search_page.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from imgwatch.events import ImageEvent
from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.sources.webhook import AllowedPaths
from imgwatch.web import create_app
from imgwatch.web.local import LocalSurface
from imgwatch.web.server import HttpServer, bind_tcp, bind_unix
from imgwatch.web.webhook import WebhookConfig, WebhookSurface
from tests.conftest import own_address, serve, stub_page_app
from tests.harness import wait_until

TOKEN = "tok-\u00e9"
LIMIT = 64 * 1024


class UnixConnection(http.client.HTTPConnection):
    """http.client over the control socket, so that one connection can carry several requests."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(self._path))


def exchange(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.headers, response.read()


def same_connection_twice(
    connection: http.client.HTTPConnection,
    first: tuple[str, str, bytes, dict[str, str]],
    second: tuple[str, str, bytes | None, dict[str, str]],
) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """Two requests on one kept-alive connection; fails if the server hung up in between."""
    status1, headers1, body1 = exchange(connection, *first)
    assert headers1.get("Connection", "").lower() != "close", (status1, body1)
    sock = connection.sock
    status2, _, body2 = exchange(connection, *second)
    assert connection.sock is sock, "the server closed the kept-alive connection"
    return (status1, body1), (status2, body2)


# ---- the webhook --------------------------------------------------------------------------------


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[HttpServer, list[ImageEvent]]]:
    (tmp_path / "root").mkdir()
    received: list[ImageEvent] = []
    config = WebhookConfig("127.0.0.1", 0, TOKEN, None, LIMIT, AllowedPaths((str(tmp_path / "root"),), {}))
    surface = WebhookSurface(
        config, received.append, lambda: (200, {"status": "ok"}), lambda: (b"# metrics\n", "text/plain")
    )
    server = serve(create_app(webhook=surface))
    yield server, received
    server.stop()


def _event(tmp_path: Path, name: str = "a.jpg") -> bytes:
    return json.dumps({"events": [{"type": "created", "path": str(tmp_path / "root" / name)}]}).encode()


def test_webhook_refusals_before_the_body_keep_the_connection_usable(
    webhook: tuple[HttpServer, list[ImageEvent]], tmp_path: Path
) -> None:
    server, received = webhook
    bearer = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}
    # The old server answered 401 before reading the body and then read the body as a request.
    looks_like_a_request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        (status1, body1), (status2, body2) = same_connection_twice(
            connection,
            ("POST", "/events", looks_like_a_request, {}),
            ("POST", "/events", _event(tmp_path), bearer),
        )
        assert status1 == 401 and "bearer token" in json.loads(body1)["error"]
        assert (status2, json.loads(body2)) == (202, {"accepted": 1, "ignored": []})
        # Over the limit: 413 after the client sent it all (as a browser does), then the next request.
        (status1, body1), (status2, body2) = same_connection_twice(
            connection,
            ("POST", "/events", b"x" * (LIMIT + 1), bearer),
            ("GET", "/healthz", None, {}),
        )
        assert status1 == 413 and "webhook_max_bytes" in json.loads(body1)["error"]
        assert (status2, json.loads(body2)) == (200, {"status": "ok"})
    finally:
        connection.close()
    assert len(received) == 1


def test_a_chunked_body_is_refused_while_it_is_read(
    webhook: tuple[HttpServer, list[ImageEvent]], tmp_path: Path
) -> None:
    server, received = webhook
    bearer = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}
    small = _event(tmp_path)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            "POST", "/events", body=iter([small[:10], small[10:]]), headers=bearer, encode_chunked=True
        )
        assert connection.getresponse().status == 202  # chunked bodies are read, not refused
    finally:
        connection.close()
    # The oversized body is never finished: the answer must come while it is still being sent. The
    # client stops once past the limit, as a well-behaved one does, so that nothing it sent is
    # left unread when the server closes (which would turn the close into a reset).
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        raw.sendall(
            b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        for _ in range(LIMIT // 4096 + 1):
            raw.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            block = raw.recv(65536)
            if not block:
                break
            reply += block
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert "over the limit" in json.loads(body)["error"]
    assert len(received) == 1


@pytest.mark.parametrize("public", [False, True])
def test_off_loopback_metrics_need_the_token_unless_made_public(tmp_path: Path, public: bool) -> None:
    host = own_address()
    if host is None:
        pytest.skip("no non-loopback address on this machine")
    config = WebhookConfig(host, 0, TOKEN, None, LIMIT, AllowedPaths((), {}), metrics_public=public)
    surface = WebhookSurface(config, lambda _e: None, lambda: (200, {}), lambda: (b"# m\n", "text/plain"))
    server = serve(create_app(webhook=surface), host)
    try:
        connection = http.client.HTTPConnection(host, server.port, timeout=30)
        assert exchange(connection, "GET", "/metrics")[0] == (200 if public else 401)
        bearer = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}
        assert exchange(connection, "GET", "/metrics", headers=bearer)[0] == 200
        assert exchange(connection, "GET", "/healthz")[0] == 200  # health checks need no token
        connection.close()
    finally:
        server.stop()


# ---- the search page ------------------------------------------------------------------------------


@pytest.fixture
def page() -> Iterator[HttpServer]:
    server = serve(stub_page_app(None, LIMIT))
    yield server
    server.stop()


def test_page_refusals_before_the_body_keep_the_connection_usable(page: HttpServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=30)
    junk = b"xxxx /nope HTTP/1.1\r\nHost: x\r\n\r\n" * 20  # used to come back as "501 Unsupported method"
    try:
        (status1, body1), (status2, body2) = same_connection_twice(
            connection, ("POST", "/api/search?k=abc", junk, {}), ("GET", "/static/search.css", None, {})
        )
        assert status1 == 400 and "k" in json.loads(body1)["error"]
        assert status2 == 200 and b"{" in body2
        (status1, body1), (status2, body2) = same_connection_twice(
            connection,
            ("POST", "/api/search", b"\xff" * (LIMIT + 1), {}),
            ("POST", "/api/search?k=1", b"img", {}),
        )
        assert status1 == 413 and "search_page_max_bytes" in json.loads(body1)["error"]
        assert status2 == 200 and json.loads(body2)["results"][0]["path"] == "/p/a.jpg"
        (status1, _), (status2, _) = same_connection_twice(
            connection, ("POST", "/api/search", junk, {"Host": "rebind.example"}), ("GET", "/", None, {})
        )
        assert (status1, status2) == (403, 200)
    finally:
        connection.close()


def test_another_sites_page_cannot_make_a_browser_search(page: HttpServer) -> None:
    """What a cross-site form can send without a CORS preflight (a POST with an image or a multipart
    body) is refused by its Origin or Sec-Fetch-Site; the page's own requests (same origin) pass."""
    connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=30)
    own = f"http://127.0.0.1:{page.port}"
    try:
        # /api/check has the same guard: tests/test_check.py.
        for foreign in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            status, _, body = exchange(connection, "POST", "/api/search?k=1", b"img", foreign)
            assert status == 403 and "another site" in json.loads(body)["error"], foreign
        status, _, body = exchange(connection, "POST", "/api/search?k=1", b"img", {"Origin": own})
        assert status == 200 and json.loads(body)["results"][0]["path"] == "/p/a.jpg"
        status, _, _ = exchange(
            connection, "POST", "/api/search?k=1", b"img", {"Sec-Fetch-Site": "same-origin"}
        )
        assert status == 200
    finally:
        connection.close()


def test_a_tokened_page_refuses_before_the_body_and_serves_the_next(page: HttpServer) -> None:
    server = serve(stub_page_app(TOKEN, LIMIT))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    bearer = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}
    try:
        (status1, _), (status2, body2) = same_connection_twice(
            connection,
            ("POST", "/api/search", b"GET / HTTP/1.1\r\n\r\n" * 30, {}),
            ("GET", "/openapi.json", None, bearer),
        )
        assert status1 == 401 and status2 == 200 and json.loads(body2)["openapi"].startswith("3.")
    finally:
        connection.close()
        server.stop()


# ---- the control socket ----------------------------------------------------------------------------


def _local_surface(seen: list[Any]) -> LocalSurface:
    def reply(name: str) -> Any:
        return lambda *args: seen.append((name, *args)) or {"called": name, "results": []}

    return LocalSurface(
        status=lambda: {"pid": os.getpid()},
        search=reply("search"),
        search_like=reply("search_like"),
        duplicates=reply("duplicates"),
        index=reply("index"),
        invoke=reply("invoke"),
        run_job=reply("run_job"),
        forget_root=reply("forget_root"),
    )


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[Path, list[Any]]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seen: list[Any] = []
    server = HttpServer(
        create_app(local=_local_surface(seen)), bind_unix(data_dir / "imgwatch.sock"), "imgwatch-test-socket"
    )
    server.start()
    yield data_dir, seen
    server.stop()


def test_socket_refusals_keep_the_connection_usable_and_names_survive(
    control: tuple[Path, list[Any]],
) -> None:
    data_dir, seen = control
    connection = UnixConnection(data_dir / "imgwatch.sock")
    try:
        (status1, body1), (status2, body2) = same_connection_twice(
            connection,
            ("POST", "/nope", b"GET /status HTTP/1.1\r\n\r\n" * 10, {}),
            ("GET", "/status", None, {}),
        )
        assert status1 == 404 and "no such endpoint" in json.loads(body1)["error"]
        assert (status2, json.loads(body2)) == (200, {"pid": os.getpid()})
        (status1, body1), (status2, _) = same_connection_twice(
            connection,
            ("POST", "/search", b'{"k": "many"}', {"Content-Type": "application/json"}),
            ("GET", "/status", None, {}),
        )
        assert status1 == 422 and json.loads(body1)["detail"][0]["loc"][:2] == ["body", "k"]
        assert status2 == 200
    finally:
        connection.close()
    # A name that is not UTF-8 goes through the client and the socket as the same bytes.
    odd = os.fsdecode(b"/photos/odd \xff name.jpg")
    assert DaemonClient(data_dir).search_like([odd], 3) == []  # the stub's reply has no results
    assert seen == [("search_like", [odd], 3)]


def test_the_socket_is_for_its_owner_only(control: tuple[Path, list[Any]]) -> None:
    data_dir, _ = control
    mode = (data_dir / "imgwatch.sock").stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not [p.name for p in data_dir.iterdir() if p.name.startswith(".socket-")]
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to try as another user")
    os.chmod(data_dir, 0o755)  # noqa: S103 - open on purpose: only the socket's own mode keeps others out
    code = f"import socket; socket.socket(socket.AF_UNIX).connect({str(data_dir / 'imgwatch.sock')!r})"
    other = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.returncode != 0 and "Permission denied" in other.stderr


def test_no_daemon_is_a_clear_error_and_leaks_no_socket(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailableError, match="no daemon answers"):
        DaemonClient(tmp_path).status()  # the autouse warnings filter fails a leaked socket


# ---- OpenAPI and logging ------------------------------------------------------------------------


def test_openapi_is_served_valid_and_behind_the_ports_rules(
    webhook: tuple[HttpServer, list[ImageEvent]], page: HttpServer, control: tuple[Path, list[Any]]
) -> None:
    server, _ = webhook
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    assert exchange(connection, "GET", "/openapi.json")[0] == 401
    bearer = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}
    status, _, body = exchange(connection, "GET", "/openapi.json", headers=bearer)
    connection.close()
    assert status == 200
    document = json.loads(body)
    validate(document)
    events = document["paths"]["/events"]["post"]
    formats = events["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert {f["$ref"].rsplit("/", 1)[1] for f in formats} == {"GenericBody", "S3Body"}
    assert {"GenericBody", "S3Body", "MovedEvent", "S3Record", "ErrorBody"} <= set(
        document["components"]["schemas"]
    )
    assert {"202", "401", "413", "422"} <= set(events["responses"])

    connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=30)
    assert exchange(connection, "GET", "/openapi.json", headers={"Host": "evil.example"})[0] == 403
    status, _, body = exchange(connection, "GET", "/openapi.json")
    connection.close()
    assert status == 200
    document = json.loads(body)
    validate(document)
    assert {"/api/search", "/api/like", "/thumb"} <= set(document["paths"])
    like = {p["name"]: p for p in document["paths"]["/api/like"]["get"]["parameters"]}
    assert like["k"]["schema"]["maximum"] == 200

    data_dir, _ = control
    socket_document = DaemonClient(data_dir).request("GET", "/openapi.json")
    validate(socket_document)
    assert {"/status", "/search", "/index", "/roots/forget"} <= set(socket_document["paths"])


def test_the_access_log_goes_through_the_daemons_logging(
    page: HttpServer, control: tuple[Path, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """As in the daemon: the page and the control socket served side by side in one process."""
    data_dir, _ = control
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        connection = http.client.HTTPConnection("127.0.0.1", page.port, timeout=30)
        assert exchange(connection, "GET", "/static/search.js")[0] == 200
        connection.close()
        DaemonClient(data_dir).status()
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("GET /static/search.js" in line and "200" in line for line in lines), lines
    assert not any("/status" in line for line in lines)  # the CLI's own requests stay out


def test_a_port_in_use_is_a_clear_error(webhook: tuple[HttpServer, list[ImageEvent]]) -> None:
    from imgwatch.errors import ConfigError
    from imgwatch.web.server import bind_tcp

    server, _ = webhook
    with pytest.raises(ConfigError, match=f"--webhook.*cannot listen on 127.0.0.1:{server.port}"):
        bind_tcp("127.0.0.1", server.port, "--webhook")


# ---- what review found -----------------------------------------------------------------------------


def test_a_client_that_never_finishes_its_headers_is_disconnected(tmp_path: Path) -> None:
    app = stub_page_app(None, LIMIT)
    server = HttpServer(app, bind_tcp("127.0.0.1", 0, "test"), "imgwatch-test-http", headers_deadline_s=1.0)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and then nothing
            started = time.monotonic()
            assert slow.recv(1024) == b""  # the server hung up
            assert time.monotonic() - started < 10
        # A kept-alive connection that answered once gets the same deadline for its next request.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
            client.sendall(b"GET /static/search.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            client.sendall(b"GET / HTTP/1.1\r\nHo")
            deadline = time.monotonic() + 10
            while (data := client.recv(65536)) and time.monotonic() < deadline:
                pass  # the rest of the first answer, if it came in pieces
            assert data == b""
    finally:
        server.stop()


def test_the_access_log_never_shows_a_token(caplog: pytest.LogCaptureFixture) -> None:
    server = serve(stub_page_app(TOKEN, LIMIT))
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.access"):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            assert exchange(connection, "GET", "/?k=5&token=tok-%C3%A9")[0] == 303
            connection.close()
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("token=REDACTED" in line and "k=5" in line for line in lines), lines
    assert not any("tok-" in line for line in lines)


def test_both_framings_at_once_are_refused_and_the_connection_ends(
    webhook: tuple[HttpServer, list[ImageEvent]],
) -> None:
    server, received = webhook
    smuggled = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(smuggled)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"not both" in answer
    assert answer.count(b"HTTP/1.1") == 1  # the second request was never answered
    assert received == []


def test_made_up_methods_share_one_metric_label(tmp_path: Path) -> None:
    counted: list[tuple[str, int]] = []
    config = WebhookConfig("127.0.0.1", 0, None, None, LIMIT, AllowedPaths((), {}))
    surface = WebhookSurface(config, lambda _e: None, lambda: (200, {}), lambda: (b"", "text/plain"))
    server = serve(create_app(webhook=surface, on_request=lambda m, s: counted.append((m, s))))
    try:
        for method in ("M0XYZ", "M1XYZ", "GET"):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            exchange(connection, method, "/healthz")
            connection.close()
    finally:
        server.stop()
    assert counted == [("other", 405), ("other", 405), ("GET", 200)]


def test_a_crash_is_one_json_500_logged_once_and_the_connection_lives_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    surface = _local_surface([])
    surface = LocalSurface(**{**surface.__dict__, "status": broken})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = HttpServer(
        create_app(local=surface), bind_unix(data_dir / "imgwatch.sock"), "imgwatch-test-socket"
    )
    server.start()
    connection = UnixConnection(data_dir / "imgwatch.sock")
    try:
        with caplog.at_level(logging.ERROR):
            (status1, body1), (status2, _) = same_connection_twice(
                connection,
                ("GET", "/status", b"", {}),
                ("POST", "/index", b'{"roots": ["/x"]}', {"Content-Type": "application/json"}),
            )
        assert (status1, json.loads(body1)) == (500, {"error": "internal error (logged)"})
        assert status2 == 200
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1 and "a bug" in str(tracebacks[0].exc_info[1])  # type: ignore[index]
        with pytest.raises(DaemonUnavailableError, match="the daemon refused /status: internal error"):
            DaemonClient(data_dir).status()
    finally:
        connection.close()
        server.stop()


def test_a_long_request_never_holds_up_shutdown(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_index(_roots: list[str]) -> dict[str, Any]:
        release.wait(120)
        return {}

    surface = LocalSurface(**{**_local_surface([]).__dict__, "index": slow_index})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = HttpServer(
        create_app(local=surface),
        bind_unix(data_dir / "imgwatch.sock"),
        "imgwatch-test-socket",
        work=surface.work,
    )
    server.start()
    failures: list[Exception] = []

    def client() -> None:
        try:
            DaemonClient(data_dir, timeout=60).index(["/photos"])
        except DaemonUnavailableError as e:
            failures.append(e)

    caller = threading.Thread(target=client)
    caller.start()
    try:
        # However long a loaded machine takes to get the request in; the bound tested is the stop's.
        wait_until(lambda: surface.work.wait(0) > 0, timeout=120, interval=0.05)
        workers = [t for t in threading.enumerate() if t.name == "imgwatch-request"]
        assert workers and all(t.daemon for t in workers)  # the process may exit without them
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 15  # graceful period, then the request is abandoned
        caller.join(30)
        assert len(failures) == 1  # told, not left waiting
        assert "refused /index" in str(failures[0]) or "no daemon answers" in str(failures[0])
    finally:
        release.set()
        caller.join(30)
        surface.work.wait(30)


def test_a_public_webhook_without_a_token_is_refused_by_its_config() -> None:
    from imgwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="without a token"):
        WebhookConfig("0.0.0.0", 0, None, None, LIMIT, AllowedPaths((), {}))  # noqa: S104


def test_openapi_declares_the_auth_and_our_error_shapes(webhook: tuple[HttpServer, list[ImageEvent]]) -> None:
    server, _ = webhook
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    bearer = {"Authorization": f"Bearer {TOKEN}".encode().decode("latin-1")}
    document = json.loads(exchange(connection, "GET", "/openapi.json", headers=bearer)[2])
    connection.close()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["signature"]["name"] == "X-Imgwatch-Signature"
    assert "HTTPValidationError" not in json.dumps(document)
    health = document["paths"]["/healthz"]["get"]["responses"]
    assert health["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Health")


def test_a_long_socket_path_under_a_missing_data_dir_is_no_daemon(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 120) / "data"  # past sun_path's 108 bytes, and not there
    with pytest.raises(DaemonUnavailableError):
        DaemonClient(data_dir).status()
