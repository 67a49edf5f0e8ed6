"""uvicorn inside the daemon: one server per surface, each in a thread with its own event loop.

Why threads: the daemon's runtime is a plain thread loop, and its services (the model, Milvus,
SQLite) are blocking. Each surface gets an event loop in a thread of its own, routes are plain
``def`` functions that Starlette runs in its worker threads, and a stuck surface cannot stall the
others. The sockets are bound here, in the caller's thread, so a port in use or a refused address
fails ``imgwatch watch`` before anything runs. docs/decisions.md says more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgwatch.errors import ConfigError
from imgwatch.ipc import short_unix_path
from imgwatch.web.common import BlockingWork

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
#: A client has this long to send a request's line and headers (the old servers allowed 15-30 s).
HEADERS_DEADLINE_S = 15.0
#: Open connections get this long to finish when the daemon stops; then they are closed.
GRACEFUL_S = 3.0


def bind_tcp(host: str, port: int, option: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(option, f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A listening socket at ``path`` that only this user can connect to.

    It is bound inside a fresh private directory, given mode 0600 there, and only then renamed into
    place: nobody else can reach it at any moment, and the process-wide umask, which other threads
    share, is never touched.
    """
    path.unlink(missing_ok=True)  # a stale socket from a killed daemon; the caller holds the data dir lock
    private = Path(tempfile.mkdtemp(prefix=".socket-", dir=path.parent))  # mode 0700
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        target, fd = short_unix_path(private / path.name)
        try:
            sock.bind(target)
            os.chmod(target, 0o600)
        finally:
            if fd is not None:
                os.close(fd)
        # Listening before it appears: a client that finds the file can connect at once.
        sock.listen(128)
        os.rename(private / path.name, path)
    except OSError:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            (private / path.name).unlink()
        private.rmdir()
    return sock


class _H11WithHeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn has none: a client that connects and never finishes its headers (slowloris) would hold
    the connection for ever. The deadline starts when the connection opens and again after each
    answer; whoever has not sent a whole request line and headers by then is disconnected. (The
    body has its own deadline, in :func:`imgwatch.web.common.read_body`.)
    """

    headers_deadline_s: ClassVar[float] = HEADERS_DEADLINE_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.headers_deadline_s, self._expire)

    def _expire(self) -> None:
        # IDLE: no complete request since the deadline was set (a request being read or answered
        # has moved on to SEND_BODY or DONE).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class _AccessLogFilter(logging.Filter):
    """The access log must not keep secrets: ``/?token=...`` (the page's one-time login) is logged
    as ``token=REDACTED``. The control socket's requests (the CLI's own; their peer has no address)
    are left out: uvicorn's ``access_log=False`` would switch the log off for every server in the
    process, since all share the ``uvicorn.access`` logger."""

    _TOKEN = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args and not record.args[0]:
            return False
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            path = args[2]
            if isinstance(path, str):
                args[2] = self._TOKEN.sub(r"\1REDACTED", path)
                record.args = tuple(args)
        return True


_ACCESS_LOG = logging.getLogger("uvicorn.access")
if not any(isinstance(f, _AccessLogFilter) for f in _ACCESS_LOG.filters):
    _ACCESS_LOG.addFilter(_AccessLogFilter())


class HttpServer:
    """One ASGI app on one bound socket, served by uvicorn from a thread of its own."""

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        name: str,
        *,
        headers_deadline_s: float = HEADERS_DEADLINE_S,
        work: BlockingWork | None = None,
    ) -> None:
        protocol = type("_H11", (_H11WithHeaderDeadline,), {"headers_deadline_s": headers_deadline_s})
        config = uvicorn.Config(
            app,
            # The daemon's logging: uvicorn's loggers propagate to its handlers, none of their own.
            log_config=None,
            lifespan="off",
            # h11 discards the unread rest of a refused body (see BodyGuard); pinned (and given a
            # headers deadline) so that installing httptools does not change what a connection does.
            http=protocol,
            ws="none",
            timeout_keep_alive=15,
            timeout_graceful_shutdown=int(GRACEFUL_S),
            # The access log shows the peer as it connected: no X-Forwarded-For from anyone local.
            proxy_headers=False,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._work = work
        self._sock = sock
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name)

    @property
    def port(self) -> int:
        """The bound TCP port (0 for a Unix socket)."""
        address = self._sock.getsockname()
        return int(address[1]) if isinstance(address, tuple) else 0

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as e:
            self._failed = e
            log.exception("%s stopped", self._thread.name)

    def start(self) -> None:
        """Serve; returns once uvicorn accepts connections."""
        self._thread.start()
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < START_TIMEOUT_S:
            self._thread.join(0.01)
            waited += 0.01
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"{self._thread.name} did not start: {self._failed!r}")

    def request_stop(self) -> None:
        """Stop accepting; open connections get ``GRACEFUL_S`` to finish (see :meth:`join`)."""
        self._server.should_exit = True

    def join(self, timeout: float = GRACEFUL_S + 5) -> None:
        """Wait for the server to stop, and for its requests' blocking work, within ``timeout``."""
        deadline = time.monotonic() + timeout
        self._thread.join(timeout=timeout)
        self._sock.close()
        left = self._work.wait(max(0.0, deadline - time.monotonic())) if self._work is not None else 0
        if left:
            # Daemon threads: the process exits without them; what they did is journalled.
            log.warning("%s: %d request(s) still running at shutdown are abandoned", self._thread.name, left)

    def stop(self) -> None:
        self.request_stop()
        self.join()


def stop_all(servers: list[HttpServer | None]) -> None:
    """Stop several at once: their graceful periods run side by side, not one after the other."""
    running = [server for server in servers if server is not None]
    for server in running:
        server.request_stop()
    for server in running:
        server.join()
