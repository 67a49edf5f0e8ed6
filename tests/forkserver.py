"""Start ``python -m imgwatch ...`` for the suite by forking a process that has already imported it.

Most of a daemon's start is importing torch, torchvision, pymilvus, SQLAlchemy and the daemon's own
modules (about 4.5 s of CPU on a quiet 2-core machine, more under the suite's load); the suite starts
well over a hundred daemons and model-loading commands. A fork server per test worker imports all of
that once, and forks a child for each command, which then runs ``imgwatch``'s ``__main__`` exactly as
``python -m imgwatch`` would: its own process, working directory, environment, argv, stdin/stdout/
stderr, signals, exit status and interpreter shutdown (threads joined, ``atexit`` run). What a fork
cannot give (interpreter start-up flags and ``PYTHON*`` variables read at start-up, an exec wrapper
such as ``setpriv`` or ``unshare``) the callers keep doing with a real exec; so do the tests that are
about start-up itself (import time, packaging, systemd units).

The fork server imports torch but never runs a tensor operation, so no thread pool exists to be lost in
the fork (torch's own ``pthread_atfork`` handlers cover the rest, as for DataLoader workers).

``IMGWATCH_TEST_FORK=0`` turns it off: every command is then a real exec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENABLED = os.environ.get("IMGWATCH_TEST_FORK", "1") != "0"

PRELOAD = (
    "torch",
    "torchvision",
    "numpy",
    "PIL.Image",
    "pymilvus",
    "milvus_lite",
    "sqlalchemy",
    "alembic.command",
    "watchdog.observers",
    "fastapi",
    "uvicorn",
    "apscheduler.schedulers.background",
    "imgwatch.cli",
    "imgwatch.daemon",
    "imgwatch.services.build",
    "imgwatch.services.extractor",
    "imgwatch.services.vectors",
    "imgwatch.services.catalog",
    "imgwatch.surfaces",
)

_STATUS = struct.Struct("!i")
_LENGTH = struct.Struct("!I")


@dataclasses.dataclass(frozen=True)
class Spawn:
    """One command for the fork server: what ``subprocess.Popen`` would be given."""

    args: tuple[str, ...]
    """The arguments after ``python -m imgwatch``."""
    env: dict[str, str]
    cwd: str
    stdin: str
    stdout: str
    stderr: str
    """File paths for the child's fd 0, 1 and 2 (the same path twice for ``stderr=STDOUT``)."""


def forkable(env: Mapping[str, str]) -> bool:
    """Whether a fork gives what an exec with ``env`` would: the ``PYTHON*`` variables the interpreter
    reads at start-up are those the fork server started with (``PYTHONPATH`` aside: ``imgwatch`` is
    imported already)."""
    return ENABLED and _start_up_variables(env) == _start_up_variables(os.environ)


def _start_up_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k != "PYTHONPATH"}


# ---- the client side: one fork server per test worker ---------------------------------------------


class ForkedProcess:
    """The part of ``subprocess.Popen`` the suite uses, for a child of the fork server: its exit
    status comes over a connection of its own once the server has reaped it."""

    def __init__(self, args: Sequence[str], connection: socket.socket, pid: int) -> None:
        self.args = list(args)
        self.pid = pid
        self.returncode: int | None = None
        self._connection = connection

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(BlockingIOError):
                self._receive(timeout=0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self._receive(timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0) from None
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        # Popen's rule: no signal once the exit status is known (the pid may be someone else's now).
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _receive(self, timeout: float | None) -> None:
        self._connection.settimeout(timeout)
        data = _receive_exactly(self._connection, _STATUS.size)
        (self.returncode,) = _STATUS.unpack(data)
        self._connection.close()


class ForkServer:
    """The fork server process of this test worker, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._directory = Path(tempfile.mkdtemp(prefix="imgwatch-forkserver-"))
        self._address = self._directory / "socket"

    def spawn(self, spawn: Spawn) -> ForkedProcess:
        self._ensure_started()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(self._address))
        payload = pickle.dumps(dataclasses.asdict(spawn))  # plain data: the server's Spawn is __main__'s
        connection.sendall(_LENGTH.pack(len(payload)) + payload)
        (pid,) = _STATUS.unpack(_receive_exactly(connection, _STATUS.size))
        if pid < 0:
            connection.close()
            raise OSError(-pid, f"the fork server could not start imgwatch {' '.join(spawn.args)}")
        return ForkedProcess(["imgwatch", *spawn.args], connection, pid)

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                assert self._process.stdin is not None
                self._process.stdin.close()  # the server exits on end of file
                self._process.wait(timeout=30)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            with contextlib.suppress(FileNotFoundError):
                self._address.unlink()
            repo = str(Path(__file__).resolve().parents[1])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.forkserver", str(self._address)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                cwd=repo,
                env=env,
            )
            deadline = time.monotonic() + 300
            while not self._address.exists():
                if self._process.poll() is not None:
                    raise RuntimeError(f"the fork server exited with {self._process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the fork server did not start within 300 s")
                time.sleep(0.05)


@functools.cache
def server() -> ForkServer:
    """This test worker's fork server (one per process)."""
    return ForkServer()


def shutdown() -> None:
    if server.cache_info().currsize:
        server().close()


def popen(
    args: Sequence[str | bytes],
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    stdout: Path | None = None,
    stderr: Path | None = None,
    stdin: Path | None = None,
) -> ForkedProcess:
    """``python -m imgwatch ARGS`` as a child of the fork server; ``stderr=None`` joins it to stdout."""
    out = str(stdout or os.devnull)
    return server().spawn(
        Spawn(
            args=tuple(os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args),
            env=dict(env),
            cwd=str(cwd or os.getcwd()),
            stdin=str(stdin or os.devnull),
            stdout=out,
            stderr=str(stderr) if stderr else out,
        )
    )


def run(
    args: Sequence[str | bytes],
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    timeout: float | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run([python, -m, imgwatch, *args], capture_output=True)`` through the fork server."""
    with tempfile.TemporaryDirectory(prefix="imgwatch-run-") as scratch:
        out, err, given = (Path(scratch) / name for name in ("out", "err", "in"))
        given.write_bytes(input or b"")
        process = popen(args, env, cwd=cwd, stdout=out, stderr=err, stdin=given)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(process.args, code, out.read_bytes(), err.read_bytes())


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        block = connection.recv(size - len(data))
        if not block:
            raise ConnectionError("the fork server closed the connection")
        data += block
    return data


# ---- the server side --------------------------------------------------------------------------------


def _serve(address: str) -> Spawn | None:
    """Accept commands until stdin closes; returns (only in a forked child) the command to run."""
    for name in PRELOAD:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".new")
    listener.listen(64)
    os.rename(address + ".new", address)  # the client waits for the name: it appears ready
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    while True:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is listener:
                connection, _ = listener.accept()
                spawn = _read_spawn(connection)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    connection.close()
                    for other in waiting.values():
                        other.close()
                    return spawn
                with contextlib.suppress(OSError):
                    connection.sendall(_STATUS.pack(pid))
                waiting[pid] = connection
            elif not os.read(sys.stdin.fileno(), 4096):
                return None
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            connection = waiting.pop(pid)
            with contextlib.suppress(OSError):
                connection.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
            connection.close()


def _read_spawn(connection: socket.socket) -> Spawn:
    (length,) = _LENGTH.unpack(_receive_exactly(connection, _LENGTH.size))
    fields = pickle.loads(_receive_exactly(connection, length))  # noqa: S301 - our own test worker
    return Spawn(**fields)


def _become(spawn: Spawn) -> None:
    """In the forked child: the process state ``python -m imgwatch`` would start with."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, path, flags in (
        (0, spawn.stdin, os.O_RDONLY),
        (1, spawn.stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
        (2, spawn.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
    ):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(spawn.cwd)
    os.environ.clear()
    os.environ.update(spawn.env)
    sys.path[0] = spawn.cwd  # as `-m` puts the working directory first
    sys.argv = ["imgwatch", *spawn.args]


def main(argv: Sequence[str]) -> None:
    spawn = _serve(argv[0])
    if spawn is None:
        return
    _become(spawn)
    import runpy

    # SystemExit leaves from here as from any `python -m imgwatch`: the interpreter's own shutdown.
    runpy.run_module("imgwatch", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])


__all__: list[Any] = ["ForkedProcess", "forkable", "popen", "run", "shutdown"]
