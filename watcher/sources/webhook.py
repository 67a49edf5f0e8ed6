"""Webhook source: an authenticated HTTP endpoint that turns posted JSON into typed events.

Two body formats, told apart by their top-level key:

- generic: ``{"events": [{"type": "created|modified|deleted|moved", "path": "/abs/a.jpg",
  "dest_path": "/abs/b.jpg"}]}`` (``dest_path`` only for moves);
- S3 event notifications as AWS S3 and MinIO send them: ``{"Records": [{"eventName":
  "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "photos"}, "object": {"key": "a%20b.jpg"}}}]}``,
  mapped to local paths through the configured ``bucket -> directory`` mounts.

Like the filesystem source, this only produces events: the daemon's :meth:`submit` journals each
one before the endpoint answers ``202``, so an accepted event survives a crash right after.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from imgwatch.errors import ConfigError
from imgwatch.events import (
    DirectoryCreated,
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageMoved,
    Source,
)
from imgwatch.scan import has_image_extension

log = logging.getLogger(__name__)

PATH_MAX_BYTES = 4096
NAME_MAX_BYTES = 255
MAX_EVENTS = 10_000
GENERIC_TYPES = ("created", "modified", "deleted", "moved")
SIGNATURE_HEADER = "X-Imgwatch-Signature"


class MalformedBodyError(Exception):
    """Not JSON, or not an object (HTTP 400)."""


class InvalidEventError(Exception):
    """JSON, but not a valid event list (HTTP 422)."""


class ForbiddenPathError(Exception):
    """A path outside every root and mount, or otherwise unacceptable (HTTP 403)."""


@dataclass(frozen=True)
class Parsed:
    events: list[ImageEvent]
    ignored: list[str]
    """Paths accepted but not acted on because they are not image files."""


@dataclass(frozen=True)
class AllowedPaths:
    """Where events may point: the roots and the S3 mount directories (none: anywhere, for local use)."""

    directories: tuple[str, ...]
    mounts: Mapping[str, str]

    def check(self, raw: object, where: str) -> str:
        """``raw`` as a normalised absolute path, or an exception saying why not."""
        if not isinstance(raw, str) or not raw:
            raise InvalidEventError(f"{where} must be a non-empty string")
        if "\0" in raw:
            raise ForbiddenPathError(f"{where} contains a NUL byte")
        try:
            encoded = os.fsencode(raw)
        except UnicodeEncodeError:
            raise ForbiddenPathError(f"{where} is not a valid file name (lone surrogate)") from None
        if len(encoded) > PATH_MAX_BYTES or any(len(part) > NAME_MAX_BYTES for part in encoded.split(b"/")):
            raise ForbiddenPathError(f"{where} is longer than the filesystem allows")
        if not raw.startswith("/"):
            raise ForbiddenPathError(f"{where} must be an absolute path")
        path = os.path.normpath(raw)
        if not self.directories:
            return path
        real = os.path.realpath(path)
        for directory in self.directories:
            if _inside(path, directory) and _inside(real, os.path.realpath(directory)):
                return path
        raise ForbiddenPathError(f"{where} {path!r} is outside every watched root and S3 mount")


def _inside(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory + "/") or directory == "/"


def parse_body(body: bytes, allowed: AllowedPaths, source: Source = Source.WEBHOOK) -> Parsed:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedBodyError(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise MalformedBodyError("body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise MalformedBodyError("body must be a JSON object with an 'events' or a 'Records' list")
    if "events" in payload:
        items, parse_one = payload["events"], _generic
    elif "Records" in payload:
        items, parse_one = payload["Records"], _s3_record
    else:
        raise InvalidEventError("body has neither 'events' (generic format) nor 'Records' (S3 notifications)")
    if not isinstance(items, list) or not items:
        raise InvalidEventError("the event list must be a non-empty JSON array")
    if len(items) > MAX_EVENTS:
        raise InvalidEventError(f"at most {MAX_EVENTS} events per request")
    events: list[ImageEvent] = []
    ignored: list[str] = []
    for number, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidEventError(f"event {number} must be a JSON object")
        produced, skipped = parse_one(item, number, allowed, source)
        events.extend(produced)
        ignored.extend(skipped)
    return Parsed(events, ignored)


def _generic(
    item: dict[str, Any], number: int, allowed: AllowedPaths, source: Source
) -> tuple[list[ImageEvent], list[str]]:
    kind = item.get("type")
    if kind not in GENERIC_TYPES:
        raise InvalidEventError(
            f"event {number}: unknown type {kind!r}; expected one of {', '.join(GENERIC_TYPES)}"
        )
    path = allowed.check(item.get("path"), f"event {number}: path")
    if kind == "moved":
        dest = allowed.check(item.get("dest_path"), f"event {number}: dest_path")
        return _moved(path, dest, source)
    if "dest_path" in item:
        raise InvalidEventError(f"event {number}: dest_path only belongs to 'moved' events")
    if kind == "deleted":
        return _deleted(path, source)
    return _changed(path, source)


def _changed(path: str, source: Source) -> tuple[list[ImageEvent], list[str]]:
    if os.path.isdir(path):
        return [DirectoryCreated(path, source=source)], []
    if not has_image_extension(path):
        return [], [path]
    return [ImageCreated(path, source=source, write_closed=True)], []


def _deleted(path: str, source: Source) -> tuple[list[ImageEvent], list[str]]:
    # The path is gone, so its kind cannot be looked up: an image name is a file, anything else a folder.
    if has_image_extension(path):
        return [ImageDeleted(path, source=source)], []
    return [DirectoryDeleted(path, source=source)], []


def _moved(src: str, dest: str, source: Source) -> tuple[list[ImageEvent], list[str]]:
    if os.path.isdir(dest):
        return [DirectoryMoved(src, dest, source=source), DirectoryCreated(dest, source=source)], []
    if has_image_extension(src) and has_image_extension(dest):
        return [ImageMoved(src, dest, source=source)], []
    if has_image_extension(dest):
        return [ImageCreated(dest, source=source, write_closed=True)], []
    if has_image_extension(src):
        return [ImageDeleted(src, source=source)], []
    return [], [dest]


def _s3_record(
    item: dict[str, Any], number: int, allowed: AllowedPaths, source: Source
) -> tuple[list[ImageEvent], list[str]]:
    name = item.get("eventName")
    if not isinstance(name, str):
        raise InvalidEventError(f"record {number}: eventName is missing")
    action = name.removeprefix("s3:").split(":", 1)[0]
    if action not in ("ObjectCreated", "ObjectRemoved"):
        raise InvalidEventError(
            f"record {number}: event {name!r} is not handled; send s3:ObjectCreated:* and s3:ObjectRemoved:*"
        )
    try:
        bucket = item["s3"]["bucket"]["name"]
        key = item["s3"]["object"]["key"]
    except (KeyError, TypeError):
        raise InvalidEventError(f"record {number}: s3.bucket.name and s3.object.key are required") from None
    if not isinstance(bucket, str) or not isinstance(key, str) or not key:
        raise InvalidEventError(f"record {number}: bucket name and object key must be non-empty strings")
    if bucket not in allowed.mounts:
        raise ForbiddenPathError(f"record {number}: bucket {bucket!r} is not mounted (see s3_mounts)")
    # S3 sends keys URL-encoded, spaces as '+'; keys are bytes, so undecodable ones keep surrogates.
    decoded = urllib.parse.unquote_plus(key, errors="surrogateescape")
    mount = allowed.mounts[bucket].rstrip("/")
    path = allowed.check(mount + "/" + decoded.lstrip("/"), f"record {number}: key")
    if not _inside(path, mount):
        raise ForbiddenPathError(f"record {number}: key {decoded!r} leaves the bucket's directory")
    if action == "ObjectRemoved":
        return ([ImageDeleted(path, source=source)], []) if has_image_extension(path) else ([], [path])
    return _changed(path, source)


# ---- HTTP ---------------------------------------------------------------------------------------


def parse_bind(text: str, option: str = "--webhook") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(option, f"expected HOST:PORT (e.g. 127.0.0.1:8765), not {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebhookConfig:
    host: str
    port: int
    token: str | None
    hmac_secret: str | None
    max_bytes: int
    allowed: AllowedPaths


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    config: WebhookConfig
    submit: Callable[[ImageEvent], None]
    health: Callable[[], tuple[int, dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]
    on_request: Callable[[str, int], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 15  # a client that stops sending mid-request does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook %s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            self._json(*self.server.health())
        elif path == "/metrics":
            body, content_type = self.server.metrics()
            self._send(200, body, content_type)
        else:
            self._json(404, {"error": f"no such endpoint: GET {path}"})

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != "/events":
            self.close_connection = True  # its body is not read
            self._json(404, {"error": f"no such endpoint: POST {path}"})
            return
        try:
            status, reply = self._accept_events()
        except Exception:
            log.exception("webhook request failed")
            status, reply = 500, {"error": "internal error (logged)"}
        self._json(status, reply)

    def do_PUT(self) -> None:
        self.close_connection = True
        self._json(405, {"error": "use POST /events"})

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _accept_events(self) -> tuple[int, dict[str, Any]]:
        config = self.server.config
        # Until the body is read, the connection cannot carry another request.
        self.close_connection = True
        if config.token is not None:
            # http.server decodes header lines as latin-1: encoding back gives the bytes sent, which
            # a client sends as UTF-8 for a token that is not ASCII.
            given = self.headers.get("Authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, f"Bearer {config.token}".encode()):
                return 401, {"error": "missing or wrong bearer token"}
        if self.headers.get("Transfer-Encoding"):
            return 411, {"error": "send a Content-Length (chunked bodies are not accepted)"}
        length_header = (self.headers.get("Content-Length") or "").strip()
        if not (length_header.isascii() and length_header.isdigit() and len(length_header) <= 12):
            return 411, {"error": "a Content-Length (decimal digits) is required"}
        length = int(length_header)
        if length > config.max_bytes:
            return 413, {"error": f"body of {length} bytes is over the limit of {config.max_bytes}"}
        body = self.rfile.read(length)
        self.close_connection = False
        if config.hmac_secret is not None:
            signature = self.headers.get(SIGNATURE_HEADER, "")
            digest = hmac.new(config.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(signature.encode("utf-8", "replace"), f"sha256={digest}".encode()):
                return 401, {"error": f"missing or wrong {SIGNATURE_HEADER} (sha256=<hex HMAC of the body>)"}
        try:
            parsed = parse_body(body, config.allowed)
        except MalformedBodyError as e:
            return 400, {"error": str(e)}
        except InvalidEventError as e:
            return 422, {"error": str(e)}
        except ForbiddenPathError as e:
            return 403, {"error": str(e)}
        for event in parsed.events:
            self.server.submit(event)  # journalled before we answer
        return 202, {"accepted": len(parsed.events), "ignored": parsed.ignored}

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.server.on_request(self.command, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="imgwatch"')
        self.end_headers()
        self.wfile.write(body)


class WebhookServer:
    """The HTTP endpoint, served from a background thread."""

    def __init__(
        self,
        config: WebhookConfig,
        submit: Callable[[ImageEvent], None],
        health: Callable[[], tuple[int, dict[str, Any]]],
        metrics: Callable[[], tuple[bytes, str]],
        on_request: Callable[[str, int], None] = lambda _method, _status: None,
    ) -> None:
        if config.token is None and not is_loopback(config.host):
            raise ConfigError(
                "webhook", f"refusing to listen on {config.host} without a token: set IMGWATCH_WEBHOOK_TOKEN"
            )
        if config.token is None:
            log.warning("the webhook on %s:%d accepts events without a token", config.host, config.port)
        server_class = type("_BoundServer", (_Server,), {"address_family": _family(config.host)})
        self._server = server_class((config.host, config.port), _Handler)
        self._server.config = config
        self._server.submit = submit
        self._server.health = health
        self._server.metrics = metrics
        self._server.on_request = on_request
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="imgwatch-webhook", kwargs={"poll_interval": 0.2}
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("webhook listening on http://%s:%d/events", self._server.config.host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def allowed_paths(roots: Iterable[str], mounts: Mapping[str, str]) -> AllowedPaths:
    return AllowedPaths(tuple(roots) + tuple(mounts.values()), dict(mounts))
