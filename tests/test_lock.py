"""The data dir lock, between real processes on a real lock file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgwatch.errors import DataDirBusyError
from imgwatch.lock import LOCK_NAME, DataDirLock, Holder, lock_holder

REPO = Path(__file__).resolve().parent.parent
REFUSED = 3

_TRY = """
import sys
from pathlib import Path
from imgwatch.errors import DataDirBusyError
from imgwatch.lock import DataDirLock
try:
    DataDirLock(Path(sys.argv[1]), sys.argv[2]).acquire(brief_wait=0).release()
except DataDirBusyError as e:
    print(e)
    sys.exit(3)
"""


def _try_elsewhere(data_dir: Path, command: str = "index") -> subprocess.CompletedProcess[str]:
    """Another process trying to take the lock once, without waiting; exit code 3 when refused."""
    return subprocess.run(
        [sys.executable, "-c", _TRY, str(data_dir), command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def held_elsewhere(data_dir: Path, code: str) -> Iterator[subprocess.Popen[bytes]]:
    """Another process that runs ``code`` (which takes a lock), says ``held`` and waits to be killed."""
    script = f"import sys, time\n{code}\nprint('held', flush=True)\ntime.sleep(120)\n"
    with subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], cwd=REPO, stdout=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"held\n"
        try:
            yield process
        finally:
            process.kill()


def test_asking_who_holds_the_lock_does_not_release_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DataDirLock(data, "watch"):
        seen = lock_holder(data)  # opens and closes a descriptor of the lock file in this process

        elsewhere = _try_elsewhere(data)

        assert elsewhere.returncode == REFUSED, elsewhere.stderr
        assert f"PID {os.getpid()} (imgwatch watch)" in elsewhere.stdout
        assert seen == Holder(pid=os.getpid(), command="watch")
    assert lock_holder(data) is None
    assert _try_elsewhere(data).returncode == 0


def test_a_second_lock_in_the_same_process_is_refused_and_the_first_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DataDirLock(data, "watch"):
        with pytest.raises(DataDirBusyError) as caught:
            DataDirLock(data, "index").acquire(brief_wait=0)

        assert caught.value.pid == os.getpid()
        assert f"PID {os.getpid()} (imgwatch watch)" in str(caught.value)
        assert _try_elsewhere(data).returncode == REFUSED


def test_a_brief_holder_is_waited_for(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from imgwatch.lock import DataDirLock\n"
        "lock = DataDirLock(Path(sys.argv[1]), 'status').acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(0.5)\n"
        "lock.release()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(data)], cwd=REPO, stdout=subprocess.PIPE
    ) as status:
        assert status.stdout is not None
        assert status.stdout.readline() == b"held\n"

        lock = DataDirLock(data, "index").acquire(brief_wait=30)
        try:
            assert lock_holder(data) == Holder(pid=os.getpid(), command="index")
        finally:
            lock.release()
        assert status.wait(timeout=30) == 0


def test_an_older_imgwatch_holding_a_posix_lock_is_seen_and_sees_ours(tmp_path: Path) -> None:
    """Earlier versions took a POSIX lock (``lockf``); both kinds must keep each other out."""
    data = tmp_path / "data"
    data.mkdir()
    older = (
        "import fcntl, os\n"
        f"fd = os.open(sys.argv[1] + '/{LOCK_NAME}', os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "os.write(fd, f'{os.getpid()} index\\n'.encode())"
    )
    with held_elsewhere(data, older) as holder:
        assert lock_holder(data) == Holder(pid=holder.pid, command="index")
        with pytest.raises(DataDirBusyError, match=f"PID {holder.pid} \\(imgwatch index\\)"):
            DataDirLock(data, "watch").acquire(brief_wait=0)

    with DataDirLock(data, "watch"):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                "except OSError:\n    sys.exit(3)",
                str(data / LOCK_NAME),
            ],
            timeout=60,
        )
        assert probe.returncode == REFUSED
