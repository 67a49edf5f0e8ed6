"""The systemd units in systemd/: systemd accepts them without a word, and they keep the daemon's promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgwatch.cli import EXIT_CONFIG, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_QUERY_FAILED
from imgwatch.config import ENV_CONFIG, ENV_VARS, load_settings
from imgwatch.daemon import SHUTDOWN_TIMEOUT_S

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
SYSTEM_UNIT = SYSTEMD_DIR / "imgwatch.service"
USER_UNIT = SYSTEMD_DIR / "user" / "imgwatch.service"
BOTH_UNITS = pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Section -> key -> every value given, in order (enough for our units: no line continuations)."""
    unit: Unit = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        unit[section].setdefault(key.strip(), []).append(value.strip())
    return unit


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def seconds(timespan: str) -> float:
    """A systemd time span (``40``, ``40s``, ``1min 30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan)
    assert parts, f"not a time span: {timespan!r}"
    return sum(float(number) * _TIME_UNITS[suffix] for number, suffix in parts)


def only(unit: Unit, key: str) -> str:
    values = unit["Service"].get(key, [])
    assert len(values) == 1, f"{key}= should be given once, found {values}"
    return values[0]


@BOTH_UNITS
def test_unit_keeps_the_daemons_promises(unit: Path) -> None:
    service = parse_unit(unit)
    assert only(service, "Type") == "notify"
    assert only(service, "NotifyAccess") == "main"
    assert seconds(only(service, "WatchdogSec")) > 0
    # systemd sends SIGKILL when TimeoutStopSec runs out: it must outlast a clean shutdown.
    assert seconds(only(service, "TimeoutStopSec")) > SHUTDOWN_TIMEOUT_S
    assert only(service, "Restart") == "on-failure"
    assert only(service, "ExecStart").split()[1:] == ["watch"]
    # PyTorch's JIT and oneDNN need writable+executable memory; the units explain why it is absent.
    assert "MemoryDenyWriteExecute" not in service["Service"]


@BOTH_UNITS
def test_unit_does_not_restart_what_a_restart_cannot_cure(unit: Path) -> None:
    """Restart=on-failure alone would start a daemon with a bad setting or a refused Milvus token
    again every RestartSec, for ever: the CLI's status for those is the one the unit exempts."""
    service = parse_unit(unit)
    assert only(service, "RestartPreventExitStatus").split() == [str(EXIT_CONFIG)]
    # Distinct from every other way the CLI ends (2: argparse's usage error), so that what may pass
    # (EXIT_FATAL: Milvus unreachable, the data dir in use) is still restarted.
    assert EXIT_CONFIG not in {EXIT_OK, EXIT_FATAL, 2, EXIT_QUERY_FAILED, EXIT_INTERRUPTED}


def test_the_units_command_with_a_bad_setting_ends_as_the_units_do_not_restart(tmp_path: Path) -> None:
    """The command systemd runs (the console script, `imgwatch watch`), configured as the system unit
    configures it (IMGWATCH_CONFIG, IMGWATCH_DATA_DIR) with a bad value in the file: the status
    systemd would see is one that both units' RestartPreventExitStatus= names."""
    system, user = parse_unit(SYSTEM_UNIT), parse_unit(USER_UNIT)
    prevented = set(only(system, "RestartPreventExitStatus").split())
    assert prevented == set(only(user, "RestartPreventExitStatus").split())
    environment = dict(value.split("=", 1) for value in system["Service"]["Environment"])
    assert {ENV_CONFIG, "IMGWATCH_DATA_DIR"} <= set(environment), environment
    config = tmp_path / "config.toml"
    config.write_text(f'roots = ["{tmp_path}"]\nbatch_size = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGWATCH_")}
    # PYTHONPATH: the script must run this checkout's package, whichever one the venv installed.
    env |= {ENV_CONFIG: str(config), "IMGWATCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        daemon_argv(), env=env, cwd="/", capture_output=True, text=True, timeout=120, check=False
    )
    assert str(result.returncode) in prevented, result.stderr
    assert f"bad configuration in {config}: batch_size must be a positive integer" in result.stderr


def daemon_argv() -> list[str]:
    """An ExecStart= command that exists here: this interpreter's console script, else ``-m``."""
    script = Path(sys.executable).parent / "imgwatch"
    if os.access(script, os.X_OK):
        return [str(script), "watch"]
    return [sys.executable, "-m", "imgwatch", "watch"]


def daemon_command() -> str:
    """:func:`daemon_argv` as an ExecStart= command line."""
    # Quoted for systemd's own command-line syntax; "%" would start a specifier.
    return " ".join(f'"{arg}"'.replace("%", "%%") for arg in daemon_argv())


def runnable_copy(unit: Path, directory: Path) -> Path:
    """The unit under its own name in ``directory``, byte for byte, but for an ExecStart= that exists.

    systemd-analyze refuses an ExecStart= binary that is not there, and the real one (/opt/imgwatch,
    ~/.local/bin) is not installed where the tests run.
    """
    original = unit.read_bytes().splitlines(keepends=True)
    starts = [i for i, line in enumerate(original) if line.startswith(b"ExecStart=")]
    assert len(starts) == 1, f"{unit} should have one ExecStart= line"
    copy = list(original)
    copy[starts[0]] = f"ExecStart={daemon_command()}\n".encode()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / unit.name
    target.write_bytes(b"".join(copy))
    return target


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is not installed, and CI installs it (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd); CI runs this test")
    return path


def verify(systemd_analyze: str, unit: Path, tmp_path: Path, *, user: bool) -> tuple[int, str, list[str]]:
    """Run ``systemd-analyze verify``: exit status, all output, and the lines that concern our unit.

    Lines about other units on this machine (pulled in through After=/Wants=) are not ours to fix.
    """
    env = dict(os.environ)
    command = [systemd_analyze, "verify", "--man=no", str(unit)]
    if user:
        # A user manager needs its runtime directory; a CI job or a root shell often has none.
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        command.insert(1, "--user")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "imgwatch" in line]
    return result.returncode, output, ours


@BOTH_UNITS
def test_systemd_accepts_the_unit_without_a_word(systemd_analyze: str, unit: Path, tmp_path: Path) -> None:
    copy = runnable_copy(unit, tmp_path / unit.parent.name)
    returncode, output, ours = verify(systemd_analyze, copy, tmp_path, user=unit == USER_UNIT)
    assert returncode == 0, output
    assert ours == [], output


def test_verify_does_report_our_mistakes(systemd_analyze: str, tmp_path: Path) -> None:
    """Guards the check above: systemd's complaints about our file do name it, and rc stays 0."""
    copy = runnable_copy(SYSTEM_UNIT, tmp_path / "system")
    copy.write_text(copy.read_text().replace("[Service]\n", "[Service]\nNoSuchSetting=yes\n"))
    returncode, output, ours = verify(systemd_analyze, copy, tmp_path, user=False)
    assert returncode == 0, output
    assert any("NoSuchSetting" in line for line in ours), output


def test_env_example_documents_every_variable() -> None:
    text = (SYSTEMD_DIR / "imgwatch.env.example").read_text()
    assert all(not line or line.startswith("#") for line in text.splitlines()), "every line stays commented"
    named = set(re.findall(r"^#([A-Z_]+)=", text, flags=re.MULTILINE))
    assert named == {*ENV_VARS.values(), ENV_CONFIG, "TORCH_HOME"}


def test_config_example_loads(tmp_path: Path) -> None:
    """The example as shipped, and with every setting uncommented (first of alternatives), loads."""
    example = SYSTEMD_DIR / "config.toml.example"
    assert load_settings(config_file=example, environ={}).roots, "the daemon needs a root"
    settings: dict[str, str] = {}
    for line in example.read_text().splitlines():
        match = re.match(r"#?(\w+) = ", line)
        if match and not line.startswith("# "):
            settings.setdefault(match.group(1), line.removeprefix("#"))
    config = tmp_path / "config.toml"
    config.write_text("\n".join(settings.values()) + "\n")
    load_settings(config_file=config, environ={})
