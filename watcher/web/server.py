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
import socket
import tempfile
import threading
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from imgwatch.errors import ConfigError
from imgwatch.ipc import short_unix_path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
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
        os.rename(private / path.name, path)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            (private / path.name).unlink()
        private.rmdir()
    return sock


class HttpServer:
    """One ASGI app on one bound socket, served by uvicorn from a thread of its own."""

    def __init__(self, app: ASGIApp, sock: socket.socket, name: str, *, access_log: bool = True) -> None:
        config = uvicorn.Config(
            app,
            # The daemon's logging: uvicorn's loggers propagate to its handlers, none of their own.
            log_config=None,
            access_log=access_log,
            lifespan="off",
            # h11 discards the unread rest of a refused body (see CloseUnreadBodies); pinned so that
            # installing httptools does not change what a kept-alive connection does.
            http="h11",
            ws="none",
            timeout_keep_alive=15,
            timeout_graceful_shutdown=int(GRACEFUL_S),
            limit_concurrency=64,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
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
        self._thread.join(timeout=timeout)
        self._sock.close()

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
