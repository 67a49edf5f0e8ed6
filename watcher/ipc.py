"""The CLI's side of the daemon's control socket: HTTP + JSON over ``<data dir>/imgwatch.sock``.

The daemon serves it (:mod:`imgwatch.web.local`); this client speaks to it with the standard
library's ``http.client`` over the Unix socket. Access is what the socket file's permissions allow
(the data dir's owner).

Not httpx: a command that finds a daemon is a thin client, and importing httpx costs more than the
rest of such a command (httpcore loads trio and anyio when they are installed: 0.2 s on a 2-core
machine), for one request on a local socket that needs none of what it offers.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.search import SearchFilter

SOCKET_NAME = "imgwatch.sock"
#: sun_path holds 108 bytes; longer socket paths are reached through /proc/self/fd of the directory.
SUN_PATH_MAX = 100


class DaemonUnavailableError(ImgwatchError):
    """No daemon answers on the data dir's socket, or it refused the request."""

    def __init__(self, message: str, *, status: int | None = None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of a refusal; None when nothing answered."""
        self.timed_out = timed_out
        """A daemon accepted the connection but did not answer in time (busy, not absent)."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def short_unix_path(path: Path) -> tuple[str, int | None]:
    """A path for bind/connect that fits in sun_path, and a directory fd to close afterwards."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) <= SUN_PATH_MAX:
        return text, None
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


class _UnixConnection(http.client.HTTPConnection):
    """One HTTP/1.1 exchange over the Unix socket at ``path``; ``timeout`` applies to each socket
    operation (connect, send, every read), None waiting for ever."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("imgwatch", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._unix_path)
        except BaseException:
            # Not left to the garbage collector: a CLI polling a starting daemon (no socket yet, a
            # stale socket file) fails to connect many times, and each would warn of a leak.
            sock.close()
            raise
        self.sock = sock


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
        # Our own JSON with ensure_ascii: names that are not UTF-8 travel as surrogate escapes,
        # which UTF-8 cannot encode.
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        connection = _UnixConnection(target, self._timeout)
        try:
            connection.request(method, endpoint, body=content, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError) as e:
            raise DaemonUnavailableError(
                f"no daemon answers on {self._path}: {e}", timed_out=isinstance(e, TimeoutError)
            ) from e
        finally:
            connection.close()
            if fd is not None:
                os.close(fd)
        try:
            reply = json.loads(data) if data else {}
        except ValueError:
            reply = None  # not our JSON: a crash answered by the server itself, say
        if response.status >= 400 or not isinstance(reply, dict):
            why = (reply.get("error") if isinstance(reply, dict) else None) or (
                f"HTTP {response.status} {response.reason}"
            )
            raise DaemonUnavailableError(f"the daemon refused {endpoint}: {why}", status=response.status)
        return reply

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status", None)

    def report(self, *, failures: bool = False) -> dict[str, Any]:
        """``imgwatch status``'s report, made by the daemon from its catalog and its state."""
        return self.request("GET", "/status/report" + ("?failures=true" if failures else ""), None)

    def search(
        self,
        queries: list[tuple[str, bytes | str]],
        k: int,
        *,
        flip: bool = False,
        crops: bool = False,
        where: SearchFilter | None = None,
    ) -> list[dict[str, Any]]:
        """``queries``: ``(name, image bytes)``, or ``(name, error text)`` for unreadable ones; ``flip``,
        ``crops`` and ``where`` as :func:`imgwatch.search.search_images` takes them."""
        body: dict[str, Any] = {
            **_options(flip, where, crops),
            "k": k,
            "queries": _encoded(queries),
        }
        return list(self.request("POST", "/search", body)["results"])

    def check(
        self, queries: list[tuple[str, bytes | str]], threshold: float, *, crops: bool = False
    ) -> list[dict[str, Any]]:
        """ "Do I already have these?": per query ``{"query", "match": {...} | None}`` (and ``error``);
        ``crops`` as :func:`imgwatch.check.check_images` takes it."""
        body: dict[str, Any] = {"threshold": threshold, "queries": _encoded(queries)}
        if crops:
            body["crops"] = True
        return list(self.request("POST", "/check", body)["results"])

    def search_like(
        self, paths: list[str], k: int, *, where: SearchFilter | None = None
    ) -> list[dict[str, Any]]:
        """Search "more like this" for indexed ``paths``: the daemon uses their stored vectors."""
        body = {**_options(False, where), "k": k, "like": paths}
        return list(self.request("POST", "/search", body)["results"])

    def duplicates(self, threshold: float, *, exact: bool = False) -> dict[str, Any]:
        # One pass over the whole collection: minutes on a large one, so no client-side timeout.
        return DaemonClient(self._path.parent, timeout=None).request(
            "POST", "/duplicates", {"threshold": threshold, "exact": exact}
        )

    def verdicts(self) -> dict[str, Any]:
        """``{"verdicts": [...]}``: the recorded not-duplicates verdicts."""
        return self.request("GET", "/duplicates/verdicts", None)

    def mark_distinct(self, paths: list[str], note: str | None) -> dict[str, Any]:
        """Record that no two of these indexed files are duplicates: ``{"added", "verdicts"}``."""
        return self.request("POST", "/duplicates/verdicts", {"paths": paths, "note": note})

    def withdraw_verdict(self, a: str, b: str) -> dict[str, Any]:
        """Remove the verdict on ``a`` and ``b`` (paths or content hashes): ``{"withdrawn": ...}``."""
        return self.request("POST", "/duplicates/verdicts/withdraw", {"a": a, "b": b})

    def index(self, roots: list[str]) -> dict[str, Any]:
        # A big first index runs for hours: no client-side timeout on this one.
        return DaemonClient(self._path.parent, timeout=None).request("POST", "/index", {"roots": roots})


def _encoded(queries: list[tuple[str, bytes | str]]) -> list[dict[str, str]]:
    """Query images as the socket takes them: base64 bytes, or the reason they could not be read."""
    return [
        {"query": name, "error": data}
        if isinstance(data, str)
        else {"query": name, "data": base64.b64encode(data).decode()}
        for name, data in queries
    ]


def _options(flip: bool, where: SearchFilter | None, crops: bool = False) -> dict[str, Any]:
    """The search options a request carries; none at all for a plain search, which every daemon
    version answers (and a daemon older than an option refuses a request that carries it)."""
    options: dict[str, Any] = {"flip": True} if flip else {}
    if crops:
        options["crops"] = True
    if where is not None and where.active:
        options |= where.as_dict()
    return options
