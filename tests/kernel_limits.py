"""The kernel's real limits for the tests: sysctls lowered (and restored), user namespaces with limits
of their own, inotify watches counted from /proc, and the daemon started under a wrapper command."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.harness import RunningDaemon

REPO = Path(__file__).resolve().parents[1]
#: Held while a test has a sysctl lowered: the two xdist workers, and other checkouts' test runs on
#: the same machine, must not save each other's lowered value as the one to restore.
SYSCTL_LOCK = Path("/tmp/imgwatch-tests-sysctl.lock")


def need(condition: bool, reason: str) -> None:
    """Skip the test without ``condition``; on CI (``CI=true``, root on a VM) fail instead."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must be able to run this test: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "changing a sysctl needs root")


def need_user_namespace() -> None:
    """``unshare -U -r`` works: a user namespace of our own, with inotify limits of its own."""
    unshare = shutil.which("unshare")
    need(unshare is not None, "needs unshare (util-linux)")
    probe = subprocess.run(
        [str(unshare), "-U", "-r", "sh", "-c", "echo 1 > /proc/sys/user/max_inotify_watches"],
        capture_output=True,
        check=False,
    )
    need(probe.returncode == 0, f"cannot limit inotify in a user namespace: {probe.stderr.decode().strip()}")


@contextmanager
def sysctl_lowered(name: str, value: int) -> Iterator[int]:
    """``/proc/sys/<name>`` set to ``value`` for the block, then restored; yields the value before."""
    path = Path("/proc/sys") / name.replace(".", "/")
    with SYSCTL_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = int(path.read_text())
        path.write_text(str(value))
        try:
            yield before
        finally:
            path.write_text(str(before))


def inotify_watches(pid: int) -> int | None:
    """How many inotify watches process ``pid`` holds (from its fdinfo); None without an inotify fd."""
    found = None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            lines = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
        except OSError:
            continue  # closed since the listing
        found = (found or 0) + sum(line.startswith("inotify wd:") for line in lines)
    return found


def launch_wrapped(
    data_dir: Path,
    *roots: Path,
    wrapper: list[str],
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> RunningDaemon:
    """``imgwatch watch`` as :func:`tests.harness.start_daemon` starts it, run by ``wrapper`` (a
    command that ends by exec'ing its arguments, so the daemon keeps the wrapper's PID); returns at
    once, see :func:`wait_answering`."""
    from tests.harness import RunningDaemon, cli_env

    log = data_dir.parent / f"daemon-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "imgwatch", "watch", *map(str, roots), "--log-level", "info", *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*wrapper, *command],
            env=cli_env(data_dir) | {"PYTHONPATH": str(REPO)} | (env or {}),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return RunningDaemon(process, data_dir, log)


def wait_answering(daemon: RunningDaemon) -> RunningDaemon:
    """Until ``daemon`` answers on its control socket; killed if it never does."""
    try:
        daemon.wait_answering()
    except BaseException:
        daemon.process.kill()
        daemon.process.wait()
        raise
    return daemon


def start_wrapped(
    data_dir: Path,
    *roots: Path,
    wrapper: list[str],
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> RunningDaemon:
    """:func:`launch_wrapped`, then :func:`wait_answering`."""
    return wait_answering(launch_wrapped(data_dir, *roots, wrapper=wrapper, extra=extra, env=env))


def nested_tree(root: Path, width: int, depth: int) -> list[Path]:
    """``width`` branches of ``depth`` nested folders under ``root``; returns every folder, root first."""
    folders = [root]
    root.mkdir(parents=True, exist_ok=True)
    for branch in range(width):
        folder = root
        for level in range(depth):
            folder = folder / f"b{branch}-l{level}"
            folder.mkdir()
            folders.append(folder)
    return folders
