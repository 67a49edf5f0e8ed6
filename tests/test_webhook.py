"""The webhook: payload parsing and path checks, then the real daemon over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgwatch.events import (
    DirectoryCreated,
    DirectoryDeleted,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageMoved,
    Source,
)
from imgwatch.sources.webhook import (
    GENERIC_TYPES,
    AllowedPaths,
    ForbiddenPathError,
    InvalidEventError,
    MalformedBodyError,
    parse_body,
)
from imgwatch.web import create_app
from imgwatch.web.webhook import WebhookConfig, WebhookSurface
from tests.conftest import serve, write_photo
from tests.harness import RunningDaemon, cli_env, imgwatch_cli, start_daemon, wait_until

# One worker for the module: its module-scoped daemon (or model) is then started once.
pytestmark = pytest.mark.xdist_group("webhook")

EVENTS = Path(__file__).parent / "events"
TOKEN = "s3cret-token"
WH = Source.WEBHOOK


def fixture(name: str, root: Path | None = None) -> bytes:
    text = (EVENTS / name).read_text()
    return (text.replace("@ROOT@", str(root)) if root else text).encode()


# ---- parsing, without a server ----------------------------------------------------------------


@pytest.fixture
def allowed(tmp_path: Path) -> AllowedPaths:
    return AllowedPaths(
        (str(tmp_path / "root"), str(tmp_path / "family"), str(tmp_path / "camera")),
        {"family-photos": str(tmp_path / "family"), "camera-roll": str(tmp_path / "camera")},
    )


def test_generic_fixtures_become_events(tmp_path: Path, allowed: AllowedPaths) -> None:
    root = tmp_path / "root"
    (root / "2024").mkdir(parents=True)
    created = parse_body(fixture("generic-created.json", root), allowed)
    assert created.events == [
        ImageCreated(str(root / "inbox" / "beach day (1).jpg"), source=WH),
        ImageCreated(str(root / "inbox" / "café-名前.jpg"), source=WH),
    ]
    moved = parse_body(fixture("generic-moved-deleted.json", root), allowed)
    assert moved.events == [
        ImageMoved(str(root / "inbox" / "beach day (1).jpg"), str(root / "2024" / "beach.jpg"), source=WH),
        ImageDeleted(str(root / "inbox" / "café-名前.jpg"), source=WH),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("aws-s3-put.json", ImageCreated("{family}/holiday/beach day (1).jpg", source=WH)),
        ("aws-s3-delete.json", ImageDeleted("{family}/holiday/beach day (1).jpg", source=WH)),
        ("minio-put.json", ImageCreated("{camera}/2024/summer/cat on sofa.jpg", source=WH)),
        ("minio-delete.json", ImageDeleted("{camera}/2024/summer/cat on sofa.jpg", source=WH)),
    ],
)
def test_s3_fixtures_map_to_mounted_paths(
    tmp_path: Path, allowed: AllowedPaths, name: str, expected: ImageCreated | ImageDeleted
) -> None:
    path = expected.path.format(family=tmp_path / "family", camera=tmp_path / "camera")
    assert parse_body(fixture(name), allowed).events == [type(expected)(path, source=WH)]


def test_access_events_are_rejected_not_ignored(allowed: AllowedPaths) -> None:
    with pytest.raises(InvalidEventError, match="ObjectAccessed:Get"):
        parse_body(fixture("minio-get.json"), allowed)


def test_unmounted_bucket_is_forbidden(allowed: AllowedPaths) -> None:
    body = fixture("minio-put.json").replace(b'"name": "camera-roll"', b'"name": "other"')
    with pytest.raises(ForbiddenPathError, match="not mounted"):
        parse_body(body, allowed)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("{root}/../outside.jpg", ForbiddenPathError),
        ("{root}/a/../../../etc/passwd.jpg", ForbiddenPathError),
        ("/etc/passwd.jpg", ForbiddenPathError),
        ("relative/a.jpg", ForbiddenPathError),
        ("{root}/a\x00.jpg", ForbiddenPathError),
        ("{root}/" + "x" * 300 + ".jpg", ForbiddenPathError),
        ("{root}/" + "d/" * 2100 + "a.jpg", ForbiddenPathError),
        ("{root}/escape/a.jpg", ForbiddenPathError),  # a symlink out of the root
        ("", InvalidEventError),
    ],
)
def test_bad_paths_are_refused(
    tmp_path: Path, allowed: AllowedPaths, path: str, error: type[Exception]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    body = json.dumps({"events": [{"type": "created", "path": path.format(root=root)}]}).encode()
    with pytest.raises(error):
        parse_body(body, allowed)


def test_s3_keys_cannot_leave_their_bucket(allowed: AllowedPaths) -> None:
    body = fixture("minio-put.json").replace(b"2024%2Fsummer%2Fcat+on+sofa.jpg", b"..%2F..%2Fetc%2Fx.jpg")
    with pytest.raises(ForbiddenPathError):
        parse_body(body, allowed)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"not json", MalformedBodyError, "not valid JSON"),
        (b"[1, 2]", MalformedBodyError, "JSON object"),
        (b"{}", InvalidEventError, "neither 'events'"),
        (b'{"events": []}', InvalidEventError, "non-empty"),
        (b'{"events": [{"type": "renamed", "path": "/x.jpg"}]}', InvalidEventError, "unknown type 'renamed'"),
        (b'{"events": [{"type": "moved", "path": "/x.jpg"}]}', InvalidEventError, "dest_path"),
        (b'{"events": [7]}', InvalidEventError, "JSON object"),
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}', InvalidEventError, "s3.bucket.name"),
        (b"[" * 100_000 + b"]" * 100_000, MalformedBodyError, "nested too deeply|not valid JSON"),
        (b'{"events": [{"type": "created", "path": "/a\\ud800.jpg"}]}', ForbiddenPathError, "lone surrogate"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        parse_body(body, AllowedPaths((), {}))


def test_non_image_paths_are_reported_as_ignored(tmp_path: Path, allowed: AllowedPaths) -> None:
    parsed = parse_body(
        json.dumps({"events": [{"type": "created", "path": f"{tmp_path}/root/notes.txt"}]}).encode(), allowed
    )
    assert parsed.events == [] and parsed.ignored == [f"{tmp_path}/root/notes.txt"]


def test_directories_are_told_apart(tmp_path: Path, allowed: AllowedPaths) -> None:
    (tmp_path / "root" / "album").mkdir(parents=True)
    body = {
        "events": [
            {"type": "created", "path": f"{tmp_path}/root/album"},
            {"type": "deleted", "path": f"{tmp_path}/root/old-album"},
        ]
    }
    assert parse_body(json.dumps(body).encode(), allowed).events == [
        DirectoryCreated(f"{tmp_path}/root/album", source=WH),
        DirectoryDeleted(f"{tmp_path}/root/old-album", source=WH),
    ]


_KEYS = st.sampled_from(
    ["events", "Records", "type", "path", "dest_path", "eventName", "s3", "bucket", "object", "key", "name"]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=15,
)
_GENERIC_EVENT = st.fixed_dictionaries(
    {
        "type": st.sampled_from([*GENERIC_TYPES, "renamed", ""]),
        "path": st.one_of(st.text(max_size=40), st.text(max_size=40).map(lambda t: "/tmp/" + t)),
    },
    optional={"dest_path": st.text(max_size=40).map(lambda t: "/tmp/" + t)},
)
#: Arbitrary bytes, arbitrary JSON built from the keys the parser looks at, and near-valid events.
BODIES = st.one_of(
    st.binary(max_size=300),
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.lists(_GENERIC_EVENT, min_size=1, max_size=4).map(
        lambda events: json.dumps({"events": events}).encode()
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_any_body_is_events_or_a_clear_refusal(allowed: AllowedPaths, body: bytes) -> None:
    try:
        parse_body(body, allowed)
    except (MalformedBodyError, InvalidEventError, ForbiddenPathError) as e:
        assert str(e)


# ---- the running daemon, over HTTP ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Webhook:
    def __init__(self, port: int, hmac_secret: str | None = None) -> None:
        self.port = port
        self.hmac_secret = hmac_secret

    def post(
        self,
        body: bytes,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        path: str = "/events",
    ) -> tuple[int, dict[str, Any]]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if self.hmac_secret is not None and "X-Imgwatch-Signature" not in sent:
            digest = hmac.new(self.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
            sent["X-Imgwatch-Signature"] = f"sha256={digest}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def _config(tmp_path: Path, mounts: dict[str, Path], extra: str = "") -> Path:
    lines = ["[s3_mounts]", *(f'"{bucket}" = "{path}"' for bucket, path in mounts.items())]
    config = tmp_path / "config.toml"
    config.write_text(extra + "\n" + "\n".join(lines) + "\n")
    return config


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningDaemon, Webhook, Path, Path]]:
    base = tmp_path_factory.mktemp("webhook")
    root, camera = base / "root", base / "camera"
    root.mkdir()
    camera.mkdir()
    port = _free_port()
    secrets = f'webhook_token = "{TOKEN}"\nwebhook_hmac_secret = "hmac-key"'
    config = _config(base, {"camera-roll": camera}, extra=secrets)
    daemon = start_daemon(
        base / "data", root, extra=("--webhook", f"127.0.0.1:{port}", "--config", str(config))
    )
    try:
        yield daemon, Webhook(port, hmac_secret="hmac-key"), root, camera
    finally:
        daemon.process.kill()
        daemon.process.wait()


def test_authorised_events_are_indexed_moved_and_deleted(
    served: tuple[RunningDaemon, Webhook, Path, Path],
) -> None:
    daemon, webhook, root, camera = served
    # A sync tool drops files where the watcher may not see them: the webhook says so.
    write_photo(camera / "2024" / "summer" / "cat on sofa.jpg", seed=800)
    status, reply = webhook.post(fixture("minio-put.json"))
    assert (status, reply) == (202, {"accepted": 1, "ignored": []})
    wait_until(
        lambda: (
            daemon.paths_found(camera / "2024" / "summer" / "cat on sofa.jpg", k=1)
            == [str(camera / "2024" / "summer" / "cat on sofa.jpg")]
        ),
        timeout=30,
    )

    write_photo(root / "inbox" / "beach day (1).jpg", seed=801)
    write_photo(root / "inbox" / "café-名前.jpg", seed=802)
    assert webhook.post(fixture("generic-created.json", root))[0] == 202
    daemon.idle()
    runs = daemon.model_runs()
    (root / "2024").mkdir()
    os.rename(root / "inbox" / "beach day (1).jpg", root / "2024" / "beach.jpg")
    (root / "inbox" / "café-名前.jpg").unlink()
    assert webhook.post(fixture("generic-moved-deleted.json", root))[0] == 202
    daemon.idle()
    assert daemon.model_runs() == runs  # the move kept its vector
    found = daemon.paths_found(root / "2024" / "beach.jpg")
    assert str(root / "2024" / "beach.jpg") in found
    assert not any("inbox" in p for p in found)

    (camera / "2024" / "summer" / "cat on sofa.jpg").unlink()
    assert webhook.post(fixture("minio-delete.json"))[0] == 202
    daemon.idle()
    assert not any("cat on sofa" in p for p in daemon.paths_found(root / "2024" / "beach.jpg"))
    assert daemon.status()["events_received"]["webhook"] >= 5


def test_refusals(served: tuple[RunningDaemon, Webhook, Path, Path]) -> None:
    _, webhook, root, _ = served
    good = json.dumps({"events": [{"type": "created", "path": f"{root}/x.jpg"}]}).encode()
    assert webhook.post(good, token=None)[0] == 401
    assert webhook.post(good, token="wrong")[0] == 401
    assert webhook.post(good, headers={"X-Imgwatch-Signature": "sha256=00"})[0] == 401
    assert (
        webhook.post(json.dumps({"events": [{"type": "created", "path": "/etc/x.jpg"}]}).encode())[0] == 403
    )
    traversal = {"events": [{"type": "created", "path": f"{root}/../../etc/x.jpg"}]}
    assert webhook.post(json.dumps(traversal).encode())[0] == 403
    nul = {"events": [{"type": "created", "path": f"{root}/a\u0000b.jpg"}]}
    assert webhook.post(json.dumps(nul).encode())[0] == 403
    assert webhook.post(b"x" * (1024 * 1024 + 1))[0] == 413
    status, reply = webhook.post(b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]
    status, reply = webhook.post(b'{"events": [{"type": "exploded", "path": "/x.jpg"}]}')
    assert status == 422 and "unknown type 'exploded'" in reply["error"]
    assert webhook.post(fixture("minio-get.json"))[0] == 422
    assert webhook.post(good, path="/nope")[0] == 404
    for length in ("\u00b2", "9" * 5000, "-1", "12abc"):  # '²' is a digit to str.isdigit()
        assert _raw_post(webhook.port, length) in (400, 411, 413)


def _raw_post(port: int, content_length: str) -> int:
    """A request with a hand-written Content-Length header; returns the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        request = (
            f"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {content_length}\r\n\r\n"
        )
        conn.sendall(request.encode("utf-8"))
        return int(conn.recv(4096).split(b" ", 2)[1])


def test_health_and_metrics(served: tuple[RunningDaemon, Webhook, Path, Path]) -> None:
    _, webhook, _, _ = served
    status, body = webhook.get("/healthz")
    assert status == 200 and json.loads(body)["store"] == "reachable"
    status, body = webhook.get("/metrics")
    text = body.decode()
    assert status == 200
    for metric in (
        "imgwatch_queue_depth",
        "imgwatch_files",
        "imgwatch_events_received_total",
        "imgwatch_extraction_seconds_bucket",
        "imgwatch_errors_total",
    ):
        assert metric in text, metric


_HEADER_VALUES = st.sampled_from(["Bearer " + TOKEN, "Bearer", "", "Basic abc", "Bearer " + TOKEN + "x"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=BODIES,
    authorization=_HEADER_VALUES,
    sign=st.booleans(),
)
def test_fuzzed_requests_never_get_a_5xx(
    served: tuple[RunningDaemon, Webhook, Path, Path], body: bytes, authorization: str, sign: bool
) -> None:
    daemon, webhook, _, _ = served
    headers = {"Authorization": authorization}
    if not sign:
        headers["X-Imgwatch-Signature"] = "sha256=" + "0" * 64
    status, _ = webhook.post(body, token=None, headers=headers)
    assert status < 500
    assert daemon.process.poll() is None


def test_an_accepted_event_survives_kill_9_right_after_the_202(
    tmp_path: Path, daemon_factory: Callable[..., RunningDaemon]
) -> None:
    root, camera = tmp_path / "root", tmp_path / "camera"
    root.mkdir()
    write_photo(camera / "2024" / "summer" / "cat on sofa.jpg", seed=900)
    port = _free_port()
    config = _config(tmp_path, {"camera-roll": camera})
    daemon = daemon_factory(root, extra=("--webhook", f"127.0.0.1:{port}", "--config", str(config)))
    daemon.idle()

    # The daemon waits 0.15 s after a complete file's event before reading it: kill it well within.
    status, reply = Webhook(port).post(fixture("minio-put.json"), token=None)
    daemon.process.kill()
    daemon.process.wait()

    assert (status, reply["accepted"]) == (202, 1)
    with sqlite3.connect(daemon.data_dir / "catalog.sqlite3") as db:
        pending = [row[0] for row in db.execute("SELECT kind FROM journal WHERE done_at IS NULL")]
        indexed = db.execute("SELECT count(*) FROM files").fetchone()[0]
    assert (pending, indexed) == (["ImageCreated"], 0)  # accepted, journalled, not yet acted on
    # The mount is not a watched root, so no catch-up scan finds the file: only the journal can.
    again = daemon_factory(root, extra=("--config", str(config)))
    again.idle()
    target = camera / "2024" / "summer" / "cat on sofa.jpg"
    assert again.paths_found(target, k=1) == [str(target)]


def test_invoke_replays_a_recorded_event_without_a_daemon(tmp_path: Path) -> None:
    camera = tmp_path / "camera"
    write_photo(camera / "2024" / "summer" / "cat on sofa.jpg", seed=901)
    config = _config(tmp_path, {"camera-roll": camera})
    env = cli_env(tmp_path / "data")

    def invoke(name: str) -> dict[str, Any]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "imgwatch",
                "invoke",
                str(EVENTS / name),
                "--json",
                "--config",
                str(config),
            ],
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    assert invoke("minio-put.json")["outcomes"][0]["outcome"] == "added"
    (camera / "2024" / "summer" / "cat on sofa.jpg").unlink()
    assert invoke("minio-delete.json")["outcomes"][0]["outcome"] == "removed"
    refused = subprocess.run(
        [sys.executable, "-m", "imgwatch", "invoke", str(EVENTS / "minio-get.json"), "--config", str(config)],
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert refused.returncode == 1 and b"ObjectAccessed:Get" in refused.stderr


def test_an_empty_token_is_no_token() -> None:
    from imgwatch.config import load_settings

    assert load_settings({}, environ={"IMGWATCH_WEBHOOK_TOKEN": ""}).webhook_token is None


def test_a_public_address_without_a_token_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = imgwatch_cli(tmp_path / "data", "watch", str(root), "--webhook", "0.0.0.0:0")
    assert result.returncode == 1 and b"without a token" in result.stderr


def test_invoke_goes_through_a_running_daemon(served: tuple[RunningDaemon, Webhook, Path, Path]) -> None:
    daemon, _, _, camera = served
    target = write_photo(camera / "2024" / "summer" / "cat on sofa.jpg", seed=950)

    result = imgwatch_cli(daemon.data_dir, "invoke", str(EVENTS / "minio-put.json"), "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"accepted": 1, "ignored": []}
    wait_until(lambda: daemon.paths_found(target, k=1) == [str(target)], timeout=30)


def test_a_non_ascii_token_matches_the_bytes_the_client_sends(tmp_path: Path, allowed: AllowedPaths) -> None:
    # ASGI servers decode header lines as latin-1; the token is compared as the bytes on the wire.
    token = "clé-ünïcode-✓"
    received: list[ImageEvent] = []
    config = WebhookConfig("127.0.0.1", 0, token, None, 1 << 20, allowed)
    surface = WebhookSurface(config, received.append, lambda: (200, {}), lambda: (b"", "text/plain"))
    server = serve(create_app(webhook=surface))
    try:
        event = {"type": "created", "path": str(tmp_path / "root" / "a.jpg")}
        body = json.dumps({"events": [event]}).encode()

        def post(authorization: bytes) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                connection.putrequest("POST", "/events")
                connection.putheader("Authorization", authorization)
                connection.putheader("Content-Type", "application/json")
                connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
                return connection.getresponse().status
            finally:
                connection.close()

        assert post(b"Bearer " + token.encode()) == 202
        assert post(b"Bearer " + "clé-ünïcode-✗".encode()) == 401
        assert post(b"Bearer " + token.encode("latin-1", "replace")) == 401
    finally:
        server.stop()
    assert received == [ImageCreated(str(tmp_path / "root" / "a.jpg"), source=WH)]
