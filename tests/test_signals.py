"""Signals to the real daemon: the second one, during a slow shutdown, exits at once; nothing is lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgwatch.daemon import SHUTDOWN_TIMEOUT_S
from imgwatch.ipc import socket_path
from tests.conftest import write_photo
from tests.harness import RunningDaemon, assert_agree, disk_images, wait_until

pytestmark = pytest.mark.slow


def test_a_second_signal_during_a_slow_shutdown_exits_at_once_and_the_next_start_loses_nothing(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    daemon = daemon_factory(root)
    for seed in range(40):
        write_photo(root / f"{seed:02d}.jpg", seed=500 + seed, size=(320, 240))
    wait_until(lambda: daemon.status()["outcomes"].get("added", 0) >= 3, timeout=300, interval=0.05)
    assert daemon.status()["queue"]["in_flight"] > 0

    daemon.process.send_signal(signal.SIGTERM)
    # The control socket goes just before the shutdown waits for the files in flight: every file
    # handed to the handler pool, ~35 at VGG16's pace, so seconds even on a fast machine.
    wait_until(lambda: not socket_path(daemon.data_dir).exists(), timeout=SHUTDOWN_TIMEOUT_S, interval=0.01)
    assert daemon.process.poll() is None
    second = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    code = daemon.process.wait(timeout=SHUTDOWN_TIMEOUT_S + 10)
    latency = time.monotonic() - second

    # 1, not the 0 of a finished drain: the second signal's os._exit, in the signal handler itself,
    # which waits for nothing, on any machine.
    assert code == 1, daemon.log.read_text()
    assert "second SIGTERM: exiting at once" in daemon.log.read_text()
    assert latency < SHUTDOWN_TIMEOUT_S / 6, latency

    again = daemon_factory(root)
    status = again.idle()
    assert status["model_runs"] > 0  # the work the first one left undone
    assert again.stop() == 0
    assert len(disk_images(root)) == 40
    assert_agree(daemon.data_dir, root)
