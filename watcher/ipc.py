"""The CLI's side of the daemon's control socket: HTTP + JSON over ``<data dir>/imgwatch.sock``.

The daemon serves it (:mod:`imgwatch.web.local`); this client speaks to it with httpx over the Unix
socket. Access is what the socket file's permissions allow (the data dir's owner).
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpcore
import httpx

from imgwatch.errors import ImgwatchError

SOCKET_NAME = "imgwatch.sock"
#: sun_path holds 108 bytes; longer socket paths are reached through /proc/self/fd of the directory.
SUN_PATH_MAX = 100


class DaemonUnavailableError(ImgwatchError):
    """No daemon answers on the data dir's socket, or it refused the request."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def short_unix_path(path: Path) -> tuple[str, int | None]:
    """A path for bind/connect that fits in sun_path, and a directory fd to close afterwards."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) <= SUN_PATH_MAX:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


class _SocketStream(httpcore.NetworkStream):
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._sock.settimeout(timeout)
        return self._sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._sock.settimeout(timeout)
        self._sock.sendall(buffer)

    def close(self) -> None:
        self._sock.close()

    def get_extra_info(self, info: str) -> Any:
        return self._sock if info == "socket" else None


class _UnixBackend(httpcore.SyncBackend):
    """httpcore's own Unix-socket connect leaks the socket when connect() fails (no daemon yet, a
    stale socket file), which a CLI polling a starting daemon does many times: close it."""

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as e:
            sock.close()
            raise httpcore.ConnectTimeout(str(e)) from e
        except OSError as e:
            sock.close()
            raise httpcore.ConnectError(str(e)) from e
        return _SocketStream(sock)


class _UnixTransport(httpx.HTTPTransport):
    def __init__(self, path: str) -> None:
        super().__init__(uds=path)
        # HTTPTransport takes no network backend; its pool does (httpx keeps it as _pool).
        self._pool = httpcore.ConnectionPool(uds=path, network_backend=_UnixBackend())


class DaemonClient:
    """Talks to the daemon serving ``data_dir``."""

    def __init__(self, data_dir: Path, timeout: float | None = 600.0) -> None:
        self._path = socket_path(data_dir)
        self._timeout = timeout

    def request(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """``body`` as JSON (POSTs get ``{}`` when it is None); the reply's JSON, or
        :class:`DaemonUnavailableError` with the daemon's ``error`` if it refused."""
        if body is None and method != "GET":
            body = {}
        try:
            target, fd = short_unix_path(self._path)
        except OSError as e:  # a long path whose data dir does not exist (yet): nobody listens there
            raise DaemonUnavailableError(f"no daemon answers on {self._path}: {e}") from e
        # Our own JSON: names that are not UTF-8 travel as surrogate escapes, which httpx's json=
        # (UTF-8 without ensure_ascii) cannot encode.
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        try:
            with httpx.Client(
                transport=_UnixTransport(target), base_url="http://imgwatch", timeout=self._timeout
            ) as client:
                response = client.request(method, endpoint, content=content, headers=headers)
        except (httpx.TransportError, OSError) as e:
            raise DaemonUnavailableError(f"no daemon answers on {self._path}: {e}") from e
        finally:
            if fd is not None:
                os.close(fd)
        try:
            reply = response.json() if response.content else {}
        except ValueError:
            reply = None  # not our JSON: a crash answered by the server itself, say
        if response.status_code >= 400 or not isinstance(reply, dict):
            why = (reply.get("error") if isinstance(reply, dict) else None) or (
                f"HTTP {response.status_code} {response.reason_phrase}"
            )
            raise DaemonUnavailableError(f"the daemon refused {endpoint}: {why}")
        return reply

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status", None)

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
