"""The daemon at inotify's real limits: a watch limit below what the tree needs, and an event queue that
overflows during a burst."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import write_photo
from tests.harness import RunningDaemon, assert_agree, disk_images, wait_until
from tests.kernel_limits import (
    inotify_watches,
    need_root,
    need_user_namespace,
    nested_tree,
    start_wrapped,
    sysctl_lowered,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def wrapped(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """:func:`start_wrapped` on ``tmp_path / "data"``; whatever is still running at the end is killed."""
    started: list[RunningDaemon] = []

    def start(*roots: Path, wrapper: list[str], extra: tuple[str, ...] = ()) -> RunningDaemon:
        daemon = start_wrapped(tmp_path / "data", *roots, wrapper=wrapper, extra=extra)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def _root_watch(daemon: RunningDaemon, root: Path) -> str | None:
    [entry] = [r for r in daemon.status()["roots"] if r["path"] == str(root)]
    watch: str | None = entry["watch"]
    return watch


def test_a_tree_beyond_the_watch_limit_is_polled_and_its_deepest_file_found(
    wrapped: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    """The daemon runs in a user namespace of its own whose inotify watch limit (the kernel's
    per-user count, as fs.inotify.max_user_watches is for the machine) is half the tree's folders:
    the root gets its watch, deeper folders do not. Lowering the machine's own sysctl instead would
    make every other process here fail to add watches meanwhile, and not all of them can be seen."""
    need_user_namespace()
    root = tmp_path / "photos"
    folders = nested_tree(root, width=8, depth=6)
    write_photo(folders[-1] / "at-start.jpg", seed=1, size=(64, 48))
    limit = len(folders) // 2
    # `unshare -r`, then the limit, then exec: the daemon keeps this process's PID.
    wrapper = [
        "unshare",
        "-U",
        "-r",
        "sh",
        "-c",
        'echo "$0" > /proc/sys/user/max_inotify_watches && exec "$@"',
    ]
    daemon = wrapped(root, wrapper=[*wrapper, str(limit)], extra=("--poll-interval", "0.5"))

    assert _root_watch(daemon, root) == "polling (inotify watch limit reached)"
    assert inotify_watches(daemon.process.pid) in (None, 0)  # the partial inotify watch was let go
    assert "sysctl fs.inotify.max_user_watches=" in daemon.log.read_text()
    daemon.idle()
    deep = write_photo(folders[-1] / "dropped.jpg", seed=2, size=(64, 48))
    wait_until(lambda: str(deep) in daemon.paths_found(deep, k=3), timeout=120)

    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)


def test_a_burst_that_overflows_inotify_s_queue_is_rescanned_and_every_file_indexed(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    """A real IN_Q_OVERFLOW in the daemon: its root's inotify instance is made while
    fs.inotify.max_queued_events is 16 (the queue's size is fixed when the instance is made, so the
    sysctl is lowered only until then: other processes' instances keep theirs), and the daemon is
    stopped (SIGSTOP, as a busy machine leaves it unscheduled) while a burst of ~60 events lands."""
    need_root()
    root = tmp_path / "photos"
    daemon = daemon_factory(root)  # missing at start: its watch is made when it appears
    assert _root_watch(daemon, root) is None
    assert inotify_watches(daemon.process.pid) is None
    staging = tmp_path / "staging"
    folders = [root / f.relative_to(staging) for f in nested_tree(staging, width=3, depth=3)]

    with sysctl_lowered("fs.inotify.max_queued_events", 16):
        staging.rename(root)  # the whole tree at once: no events on the new, small queue yet
        wait_until(lambda: inotify_watches(daemon.process.pid) is not None, timeout=120, interval=0.01)
    wait_until(lambda: _root_watch(daemon, root) == "inotify", timeout=60)
    daemon.idle()

    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        for seed in range(20):
            write_photo(folders[seed % len(folders)] / f"burst{seed}.jpg", seed=100 + seed, size=(64, 48))
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    wait_until(lambda: "event queue overflowed" in daemon.log.read_text(), timeout=120)
    status = daemon.idle()
    assert status["vectors"] == len(disk_images(root)) == 20

    # The renewed watch reports changes again (watchdog's own recovery would loop for ever here).
    after = write_photo(folders[-1] / "after.jpg", seed=200, size=(64, 48))
    wait_until(lambda: str(after) in daemon.paths_found(after, k=3), timeout=120)
    assert daemon.log.read_text().count("event queue overflowed") == 1

    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)
