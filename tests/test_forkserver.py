"""The suite's fork server (tests/forkserver.py) starts ``imgwatch`` as an exec would: the same answer
from the same command, its working directory, environment, arguments, exit status, stdin and signals.

If these drift apart, every daemon test would be testing something other than the real command."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import forkserver
from tests.harness import cli_env, launch_daemon

pytestmark = pytest.mark.skipif(
    not forkserver.ENABLED, reason="IMGWATCH_TEST_FORK=0: every command is an exec"
)


def _both(
    args: list[str | bytes], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[bytes], ...]:
    executed = subprocess.run(
        [sys.executable, "-m", "imgwatch", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=300,
        check=False,
    )
    return executed, forkserver.run(args, env, cwd=cwd, timeout=300)


def test_a_forked_command_answers_as_an_executed_one(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    # A relative path resolves against the child's own working directory, odd bytes survive argv,
    # and a failure's message and exit status are the same.
    for args in (["status", "--json"], ["index", b"relative/missing \xff dir"]):
        executed, forked = _both(list(args), env, tmp_path)
        assert forked.returncode == executed.returncode, (args, forked.stderr, executed.stderr)
        assert forked.stdout == executed.stdout, args
        assert forked.stderr == executed.stderr, args
    assert forkserver.run(["status", "--json"], env, cwd=tmp_path).returncode == 0


def test_a_forked_command_has_its_own_environment_and_stdin(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data") | {"IMGWATCH_DATA_DIR": str(tmp_path / "elsewhere")}
    forked = forkserver.run(["status", "--json"], env, cwd=tmp_path)
    assert forked.returncode == 0, forked.stderr
    assert str(tmp_path / "elsewhere") in forked.stdout.decode()
    assert not forkserver.forkable(env | {"PYTHONPROFILEIMPORTTIME": "1"})  # read at start-up: an exec


def test_a_forked_daemon_stops_on_sigterm_and_dies_on_sigkill(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for kill, expected in ((signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)):
        daemon = launch_daemon(tmp_path / "data", root)
        assert isinstance(daemon.process, forkserver.ForkedProcess)
        daemon.wait_answering()
        assert Path(f"/proc/{daemon.process.pid}/cwd").resolve() == Path.cwd().resolve()
        daemon.process.send_signal(kill)
        assert daemon.process.wait(timeout=120) == expected, daemon.log.read_text()
        assert not Path(f"/proc/{daemon.process.pid}").exists()  # reaped before its status was sent
