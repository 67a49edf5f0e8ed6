"""The daemon's local endpoint: HTTP + JSON over a Unix socket in the data dir.

Milvus Lite admits one process per data dir, so while the daemon runs, ``search``, ``status`` and
``index`` talk to it here instead of opening the store; the daemon's warm model answers searches.
Access is what the socket file's permissions allow (the data dir's owner).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from imgwatch.errors import ImgwatchError

log = logging.getLogger(__name__)

SOCKET_NAME = "imgwatch.sock"
MAX_REQUEST_BYTES = 256 * 1024 * 1024
#: sun_path holds 108 bytes; longer socket paths are reached through /proc/self/fd of the directory.
_SUN_PATH_MAX = 100

Route = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class DaemonUnavailableError(ImgwatchError):
    """No daemon answers on the data dir's socket, or it refused the request."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def _short(path: Path) -> tuple[str, int | None]:
    """A path for bind/connect that fits in sun_path, and a directory fd to close afterwards."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    routes: dict[tuple[str, str], Route]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local endpoint: " + format, *args)

    def _serve(self, method: str) -> None:
        route = self.server.routes.get((method, self.path))
        length_header = (self.headers.get("Content-Length") or "0").strip()
        if not (length_header.isascii() and length_header.isdigit()):
            self.close_connection = True
            self._reply(400, {"error": "bad Content-Length"})
            return
        length = int(length_header)
        if route is None:
            self._reply(404, {"error": f"no such endpoint: {method} {self.path}"})
            return
        if length > MAX_REQUEST_BYTES:
            self._reply(413, {"error": "request too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            status, reply = route(body)
        except (ValueError, KeyError, TypeError) as e:
            status, reply = 400, {"error": f"bad request: {e}"}
        except Exception as e:
            log.exception("local endpoint %s %s failed", method, self.path)
            status, reply = 500, {"error": f"{type(e).__name__}: {e}"}
        self._reply(status, reply)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class LocalEndpoint:
    """Serves ``routes`` on the data dir's socket from a background thread."""

    def __init__(self, data_dir: Path, routes: dict[tuple[str, str], Route]) -> None:
        path = socket_path(data_dir)
        path.unlink(missing_ok=True)  # a stale socket from a killed daemon; we hold the data dir lock
        bind_path, fd = _short(path)
        old_umask = os.umask(0o177)  # the socket is for the data dir's owner only
        try:
            self._server = _Server(bind_path, _Handler)
        finally:
            os.umask(old_umask)
            if fd is not None:
                os.close(fd)
        self._server.routes = routes
        self._path = path
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="imgwatch-endpoint", kwargs={"poll_interval": 0.2}
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._path.unlink(missing_ok=True)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        target, fd = _short(self._socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        finally:
            if fd is not None:
                os.close(fd)
        self.sock = sock


class DaemonClient:
    """Talks to the daemon serving ``data_dir``."""

    def __init__(self, data_dir: Path, timeout: float | None = 600.0) -> None:
        self._path = socket_path(data_dir)
        self._timeout = timeout

    def request(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        connection = _UnixConnection(self._path, self._timeout)
        try:
            payload = json.dumps(body or {}).encode()
            connection.request(method, endpoint, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            reply: dict[str, Any] = json.loads(response.read() or b"{}")
        except (OSError, http.client.HTTPException) as e:
            raise DaemonUnavailableError(f"no daemon answers on {self._path}: {e}") from e
        finally:
            connection.close()
        if response.status >= 400:
            raise DaemonUnavailableError(
                f"the daemon refused {endpoint}: {reply.get('error', response.status)}"
            )
        return reply

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status")

    def search(self, queries: list[tuple[str, bytes | str]], k: int) -> list[dict[str, Any]]:
        """``queries``: ``(name, image bytes)``, or ``(name, error text)`` for unreadable ones."""
        body = {
            "k": k,
            "queries": [
                {"query": name, "error": data}
                if isinstance(data, str)
                else {"query": name, "data": base64.b64encode(data).decode()}
                for name, data in queries
            ],
        }
        return list(self.request("POST", "/search", body)["results"])

    def search_like(self, paths: list[str], k: int) -> list[dict[str, Any]]:
        """Search "more like this" for indexed ``paths``: the daemon uses their stored vectors."""
        return list(self.request("POST", "/search", {"k": k, "like": paths})["results"])

    def duplicates(self, threshold: float) -> dict[str, Any]:
        # One pass over the whole collection: minutes on a large one, so no client-side timeout.
        return DaemonClient(self._path.parent, timeout=None).request(
            "POST", "/duplicates", {"threshold": threshold}
        )

    def index(self, roots: list[str]) -> dict[str, Any]:
        # A big first index runs for hours: no client-side timeout on this one.
        return DaemonClient(self._path.parent, timeout=None).request("POST", "/index", {"roots": roots})
