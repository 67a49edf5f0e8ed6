"""A private mount namespace for tests that mount and unmount for real, never on the host.

A ``sleep`` process holds the namespace (``unshare -m --propagation private``): what is mounted in it
outlives the daemon, so a test can look at the data dir after the daemon stopped, and everything
mounted in it goes when the holder is killed. The daemon enters it with ``nsenter``, which execs in
place, so the daemon's PID is the child's. The test itself stays on the host (a threaded process
cannot change its mount namespace) and reaches the namespace's files through ``/proc/PID/root``,
except SQLite files: SQLite resolves symbolic links in the path it is given, ``/proc/PID/root``
included, and would open (or create) the host's file of that name. Those are read from inside
(:meth:`MountNamespace.python`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RunningDaemon, cli_env, wait_until

TOOLS = ("unshare", "nsenter", "mount", "umount")
REPO = Path(__file__).resolve().parents[1]
AGREE = """
from pathlib import Path
from imgwatch.config import Settings
from imgwatch.services.abc import FileState
from imgwatch.services.build import open_context
from tests.harness import disk_images

root = Path({root!r})
settings = Settings(data_dir=Path({data_dir!r}), weights="random:0")
with open_context(settings, command="test", model=False) as ctx:
    records = list(ctx.catalog.under(str(root)))
    assert {{r.path for r in records}} == disk_images(root), (records, disk_images(root))
    assert all(r.state is FileState.INDEXED and r.has_vector for r in records), records
    assert ctx.vectors.count() == len(records), (ctx.vectors.count(), records)
    assert set(ctx.vectors.get_vectors(r.id for r in records)) == {{r.id for r in records}}
"""


def require_mount_namespaces() -> None:
    """Skip without root or the util-linux tools; on CI (root, CI=true) fail instead."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to mount tmpfs in a private mount namespace"
    elif missing:
        reason = f"needs {', '.join(missing)} (util-linux)"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


class MountNamespace:
    def __init__(self) -> None:
        self._holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "infinity"])
        self.pid = self._holder.pid
        self._daemons: list[RunningDaemon] = []
        mine = os.readlink("/proc/self/ns/mnt")

        def entered() -> bool:
            if self._holder.poll() is not None:
                raise AssertionError(f"unshare exited with {self._holder.returncode}")
            # unshare execs sleep only once the namespace is made private: before that, an nsenter
            # would mount on the host.
            try:
                comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
                return comm == "sleep" and os.readlink(f"/proc/{self.pid}/ns/mnt") != mine
            except OSError:
                return False

        wait_until(entered, timeout=30, interval=0.01)

    def sh(self, script: str) -> None:
        """Run ``script`` (sh) inside the namespace; fail the test if it fails."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "sh", "-ec", script], capture_output=True, check=False
        )
        assert done.returncode == 0, f"{script!r} failed: {done.stderr.decode(errors='replace')}"

    def python(self, code: str) -> str:
        """Run ``code`` in a Python inside the namespace (this checkout importable); its stdout."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", sys.executable, "-c", code],
            env=os.environ | {"PYTHONPATH": str(REPO)},
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, f"{code!r} failed: {done.stderr.decode(errors='replace')}"
        return done.stdout.decode()

    def assert_agree(self, data_dir: Path, root: Path) -> None:
        """With the daemon stopped, as the namespace sees them: disk, catalog and Milvus agree, one
        entity per file, no extras (:func:`tests.harness.assert_agree`, without loading VGG16)."""
        self.python(AGREE.format(data_dir=str(data_dir), root=str(root)))

    def path(self, path: Path) -> Path:
        """``path`` as the namespace sees it, reachable from the host."""
        return Path(f"/proc/{self.pid}/root{path}")

    def start_daemon(
        self, data_dir: Path, *roots: Path, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> RunningDaemon:
        """``imgwatch watch`` inside the namespace, as :func:`tests.harness.start_daemon` starts it;
        its ``data_dir`` is the host's way to the namespace's ``data_dir``."""
        log = data_dir.parent / f"daemon-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "imgwatch", "watch", *map(str, roots), "--log-level", "info", *extra]
        # nsenter starts in the namespace's root directory: `-m imgwatch` must still find this checkout.
        checkout = {"PYTHONPATH": str(REPO)}
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["nsenter", "-t", str(self.pid), "-m", "--", *command],
                env=cli_env(data_dir) | checkout | (env or {}),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        daemon = RunningDaemon(process, self.path(data_dir), log)
        self._daemons.append(daemon)

        daemon.wait_answering()
        return daemon

    def close(self) -> None:
        for daemon in self._daemons:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()
        self._holder.kill()
        self._holder.wait()


@contextlib.contextmanager
def mount_namespace() -> Iterator[MountNamespace]:
    """A private mount namespace, gone (with its mounts and its daemons) on leaving."""
    require_mount_namespaces()
    space = MountNamespace()
    try:
        yield space
    finally:
        space.close()
