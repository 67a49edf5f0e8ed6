"""The real daemon as a subprocess on real folders (real Milvus Lite, SQLite, VGG16 with seeded
weights), and the helpers that drive it: shared by every test that runs ``imgwatch watch``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.daemon import SHUTDOWN_TIMEOUT_S
from imgwatch.ipc import DaemonClient, DaemonUnavailableError
from imgwatch.services.abc import FileState
from imgwatch.services.build import open_context
from imgwatch.serving import Serving
from imgwatch.sources.webhook import AllowedPaths
from imgwatch.surfaces import DaemonParts
from tests import forkserver


def wait_until(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(interval)


def wait_progressing(
    condition: Callable[[], Any], progress: Callable[[], Any], stall_s: float = 120.0, interval: float = 0.1
) -> Any:
    """Wait until ``condition()`` is true, for as long as ``progress()`` keeps changing.

    For waits whose length depends on the machine (VGG16 at 4-5 images/s on an AVX2-only CPU, ~11 on
    AVX512-BF16): fails only when ``progress()`` returned the same value for ``stall_s`` seconds."""
    last: Any = object()
    progress_at = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        mark = progress()
        if mark != last:
            last, progress_at = mark, time.monotonic()
        elif time.monotonic() - progress_at > stall_s:
            raise AssertionError(f"no progress for {stall_s:g} s (still {mark!r}) waiting for {condition}")
        time.sleep(interval)


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes] | forkserver.ForkedProcess
    data_dir: Path
    log: Path

    @property
    def client(self) -> DaemonClient:
        return DaemonClient(self.data_dir, timeout=60)

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def wait_answering(self, timeout: float = 120) -> None:
        """Until the daemon answers on its control socket; fails at once if it exits instead."""

        def answering() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                self.status()
            except DaemonUnavailableError:
                return False
            return True

        wait_until(answering, timeout=timeout)

    def model_runs(self) -> int:
        return int(self.status()["model_runs"])

    def idle(self, stall_s: float = 120.0) -> dict[str, Any]:
        """Wait until nothing is waiting, running or journalled; returns the status then.

        No fixed limit on the whole wait: machines differ (VGG16 runs at 4-5 images/s on an
        AVX2-only CPU, 11 on one with AVX512-BF16), so it fails only when the daemon makes no
        progress (model runs, outcomes, journal) for ``stall_s`` seconds."""
        last: tuple[Any, ...] = ()
        progress_at = time.monotonic()

        def settled() -> dict[str, Any] | None:
            nonlocal last, progress_at
            status = self.status()
            # A daemon still loading its collection in the background counts no vectors yet.
            opening = status["store"] == "opening"
            busy = any(status["queue"].values()) or status["journal"]["pending"] or opening
            mark = (status["model_runs"], sorted(status["outcomes"].items()), status["journal"]["pending"])
            if mark != last:
                last, progress_at = mark, time.monotonic()
            elif busy and time.monotonic() - progress_at > stall_s:
                raise AssertionError(f"no progress for {stall_s:g} s: {status}")
            return None if busy else status

        wait_until(settled, timeout=3600, interval=0.2)
        time.sleep(0.3)  # events for the last change may still be on their way from the kernel
        return wait_until(settled, timeout=3600, interval=0.2)

    def search(self, image: Path | bytes, k: int = 5) -> list[dict[str, Any]]:
        data = image if isinstance(image, bytes) else image.read_bytes()
        [result] = self.client.search([("query", data)], k)
        return list(result["results"])

    def paths_found(self, image: Path | bytes, k: int = 50) -> list[str]:
        return [r["path"] for r in self.search(image, k)]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=SHUTDOWN_TIMEOUT_S + 10)


SUITE_PRECISION = os.environ.get("IMGWATCH_PRECISION", "float")
"""The model's precision in every process the suite starts and in its own extractor: ``float`` (the
fastest float precision here) unless ``IMGWATCH_PRECISION`` says otherwise, e.g. ``bf16`` to see how long
the suite takes where VGG16 runs at an AVX2-only CPU's pace. Not ``auto``: it would quantize and compile
int8 (a minute) in each test's new data dir; the int8 tests (tests/test_int8.py) build int8 once and run
``auto`` against that package. Every other ``IMGWATCH_`` variable of the caller is left out."""


def clean_env() -> dict[str, str]:
    """This process's environment without the caller's ``IMGWATCH_`` settings (but the suite's precision)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGWATCH_")}
    env["IMGWATCH_PRECISION"] = SUITE_PRECISION
    return env


def cli_env(data_dir: Path) -> dict[str, str]:
    env = clean_env()
    env.update(
        IMGWATCH_WEIGHTS="random:0", IMGWATCH_DATA_DIR=str(data_dir), XDG_CONFIG_HOME=str(data_dir / "cfg")
    )
    return env


def imgwatch_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The real command, on ``data_dir`` (through its daemon when one runs there)."""
    env = cli_env(data_dir)
    if forkserver.forkable(env):
        return forkserver.run(args, env, timeout=120)
    return subprocess.run(
        [sys.executable, "-m", "imgwatch", *args], env=env, capture_output=True, check=False, timeout=120
    )


def launch_daemon(
    data_dir: Path,
    *roots: Path,
    extra: tuple[str, ...] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> RunningDaemon:
    """The daemon process on ``data_dir``, just started: it may not answer yet (see :func:`start_daemon`)."""
    log = data_dir.parent / f"daemon-{time.monotonic_ns()}.log"
    # In another working directory, `-m imgwatch` must still find this checkout's package.
    where = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])} if cwd else {}
    args = ["watch", *map(str, roots), "--log-level", "info", *extra]
    full_env = cli_env(data_dir) | where | (env or {})
    if forkserver.forkable(full_env):
        return RunningDaemon(forkserver.popen(args, full_env, cwd=cwd, stdout=log), data_dir, log)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgwatch", *args],
            env=full_env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return RunningDaemon(process, data_dir, log)


def start_daemon(
    data_dir: Path,
    *roots: Path,
    extra: tuple[str, ...] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> RunningDaemon:
    """The daemon on ``data_dir``, once it answers; ``cwd`` and ``env`` (added to the usual
    environment) as given."""
    daemon = launch_daemon(data_dir, *roots, extra=extra, cwd=cwd, env=env)
    daemon.wait_answering()
    return daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    started: list[RunningDaemon] = []

    def factory(
        *roots: Path,
        data_dir: Path | None = None,
        extra: tuple[str, ...] = (),
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> RunningDaemon:
        """``wait=False``: return as soon as the process is started (to kill it during start-up)."""
        start = start_daemon if wait else launch_daemon
        daemon = start(data_dir or tmp_path / "data", *roots, extra=extra, cwd=cwd, env=env)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def socket_parts(settings: Settings, ctx: Context, root: Path) -> DaemonParts:
    """What ``start_control_socket`` needs, around ``ctx``: a daemon's socket without its daemon
    (the caller holds the data dir's lock as the daemon would)."""
    return DaemonParts(
        settings=settings,
        serving=Serving(ctx),
        allowed=AllowedPaths((), {}),
        roots=[str(root)],
        submit=lambda _event: None,
        health=lambda: (200, {}),
        metrics=lambda: (b"", "text/plain"),
        count_webhook_request=lambda _route, _status: None,
        status=lambda: {"pid": os.getpid()},
        index=lambda _roots: {},
        run_job=lambda _name: {},
        forget_root=lambda _root: {},
    )


def disk_images(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.jpg") if p.is_file()}


def assert_agree(data_dir: Path, root: Path) -> None:
    """With the daemon stopped: disk, catalog and Milvus agree, one entity per file, no extras."""
    settings = Settings(data_dir=data_dir, weights="random:0")
    # No model: this only reads what is stored (loading VGG16 would cost seconds per call).
    with open_context(settings, command="test", model=False) as ctx:
        records = list(ctx.catalog.under(str(root)))
        assert {r.path for r in records} == disk_images(root)
        assert all(r.state is FileState.INDEXED and r.has_vector for r in records)
        assert ctx.vectors.count() == len(records)
        assert set(ctx.vectors.get_vectors(r.id for r in records)) == {r.id for r in records}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    forkserver.shutdown()
