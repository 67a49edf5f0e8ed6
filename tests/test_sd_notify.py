"""systemd's notify protocol on a real datagram socket: what ``imgwatch watch`` says, and when."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgwatch.notify import sd_notify, watchdog_interval
from tests.conftest import write_photo
from tests.harness import assert_agree, wait_until
from tests.kernel_limits import inotify_watches, launch_wrapped, nested_tree, wait_answering


class NotifySocket:
    """What systemd listens on for ``NOTIFY_SOCKET``: each datagram's states, with when they came."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        #: Called in the receiving thread as soon as a state arrives, before the next is read.
        self.on_state: Callable[[str], None] = lambda state: None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            for state in datagram.decode().split("\n"):
                self.received.append((now, state))
                self.on_state(state)

    def times(self, state: str) -> list[float]:
        return [at for at, got in self.received if got == state]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


@pytest.mark.slow
def test_ready_watchdog_and_stopping_arrive_as_systemd_expects(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """WATCHDOG_USEC=4 s: pings about every 2 s (half of it, whatever the unit sets: a fixed
    1 s rhythm would fail), never a gap as long as the timeout itself."""
    watchdog_s = 4.0
    root = tmp_path / "photos"
    folders = nested_tree(root, width=10, depth=10)
    write_photo(root / "before.jpg", seed=1, size=(64, 48))
    watches_at_ready: list[int | None] = []
    # As systemd does: WATCHDOG_PID is the main process's (the shell's PID, kept by exec).
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}
    daemon = launch_wrapped(
        tmp_path / "data", root, wrapper=["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"], env=env
    )
    pid = daemon.process.pid

    def at_ready(state: str) -> None:
        # Frozen the moment READY=1 arrives, the daemon shows the watches it had when it sent it.
        if state == "READY=1":
            os.kill(pid, signal.SIGSTOP)
            try:
                watches_at_ready.append(inotify_watches(pid))
            finally:
                os.kill(pid, signal.SIGCONT)

    notify_socket.on_state = at_ready
    try:
        wait_answering(daemon)
        wait_until(lambda: notify_socket.times("READY=1"), timeout=120)
        assert watches_at_ready == [len(folders)]
        dropped = write_photo(folders[-1] / "after-ready.jpg", seed=2, size=(64, 48))
        wait_until(lambda: str(dropped) in daemon.paths_found(dropped, k=3), timeout=120)

        ready_at = notify_socket.times("READY=1")[0]

        def pings() -> list[float]:
            return [t for t in notify_socket.times("WATCHDOG=1") if t > ready_at]

        wait_until(lambda: len(pings()) >= 7, timeout=120)
        gaps = [b - a for a, b in itertools.pairwise(pings())]
        assert max(gaps) < watchdog_s, gaps
        assert 0.4 * watchdog_s <= statistics.median(gaps) <= 0.8 * watchdog_s, gaps

        stop_at = time.monotonic()
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
    assert [t for t in notify_socket.times("STOPPING=1") if t > stop_at]
    assert len(notify_socket.times("READY=1")) == 1
    assert_agree(daemon.data_dir, root)


def test_sd_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"imgwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1", "STATUS=watching")
        assert listener.recv(4096) == b"READY=1\nSTATUS=watching"


def test_no_notify_socket_no_notification(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("4000000", "self", 2.0),
        ("4000000", None, 2.0),
        ("4000000", "other", None),
        ("0", "self", None),
        ("4s", "self", None),
        (None, "self", None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_set_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, {"self": str(os.getpid()), "other": str(os.getppid())}.get(value, value))
    assert watchdog_interval() == interval
