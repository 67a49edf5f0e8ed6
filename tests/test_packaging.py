"""What ``pip install`` puts on the path: one namespace, ``imgwatch``, and no generic top-level names."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

GENERIC_NAMES = ("watcher", "handlers", "migrations")


def _outside_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing into the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_outside_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", GENERIC_NAMES)
def test_generic_names_are_not_importable_outside_the_checkout(tmp_path: Path, name: str) -> None:
    result = _python("-c", f"import {name}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"No module named '{name}'" in result.stderr


def test_everything_lives_under_imgwatch_outside_the_checkout(tmp_path: Path) -> None:
    code = (
        "import imgwatch, imgwatch.handlers, imgwatch.migrations, imgwatch.migrations.versions; "
        "print(imgwatch.handlers.HANDLERS and 'handlers', imgwatch.migrations.HERE)"
    )
    result = _python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    handlers, migrations_dir = result.stdout.split()
    assert handlers == "handlers"
    # The editable install reads the checkout's own files.
    assert Path(migrations_dir) == (REPO / "migrations").resolve()
    version = _python("-m", "imgwatch", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("imgwatch "), version.stderr


def test_the_wheel_holds_only_the_imgwatch_namespace(tmp_path: Path) -> None:
    """Build the wheel pip would install and look inside: every module under ``imgwatch/``."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            REPO,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("imgwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"imgwatch", wheel.name.split("-py")[0] + ".dist-info"}
    for expected in (
        "imgwatch/cli.py",
        "imgwatch/handlers/image_moved.py",
        "imgwatch/migrations/env.py",
        "imgwatch/migrations/script.py.mako",
        "imgwatch/migrations/versions/0001_initial.py",
        "imgwatch/static/search.js",
        "imgwatch/services/aoti_runner.cpp",  # built on the user's machine, beside the int8 model
    ):
        assert expected in names
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt")
    assert b"imgwatch = imgwatch.cli:run" in entry_points
