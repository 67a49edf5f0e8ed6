"""A thin client's settings (``imgwatch.config.client``) are the full settings' wherever it answers.

Every combination of the places the data dir and ``max_file_bytes`` can come from (flag, variable,
config file named three ways, defaults; relative paths, ``~`` and ``$VAR``; odd values) is resolved
both ways, from real files and environments: the thin client must answer exactly as
``load_settings`` does, or not at all (then the command loads the full settings, whose errors name
their source). And it must not import pydantic.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgwatch.config import load_settings
from imgwatch.config.client import client_settings
from imgwatch.errors import ConfigError
from imgwatch.names import SETTING_NAMES

DATA_FLAGS = [None, "flag-data", "~/flag-home-data"]
DATA_VARS = [None, "", "$PLACE/var-data", "$UNSET/x"]
FILE_DATA = [None, '"rel-data"', '"~/file-home"', '""', "12"]
FILE_SIZES = [None, "1000", '"1000"', "true"]
VAR_SIZES = [None, "2000", "2_000"]
CONFIGS = ["none", "flag", "relative-flag", "variable", "default", "missing", "broken", "unknown-key"]


def _case(tmp_path: Path, config: str, file_data: str | None, file_size: str | None) -> Path | None:
    """Write the config file of this case; the path to give with --config or IMGWATCH_CONFIG."""
    lines = [f"data_dir = {file_data}"] if file_data is not None else []
    if file_size is not None:
        lines.append(f"max_file_bytes = {file_size}")
    if config == "unknown-key":
        lines.append("no_such_setting = 1")
    text = "\n".join(lines) + "\n"
    if config == "broken":
        text += "this is = not [toml\n"
    folder = tmp_path / ("xdg-config/imgwatch" if config == "default" else "etc")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    if config != "missing":
        path.write_text(text)
    return None if config in ("none", "default") else path


def _both(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data_flag: str | None,
    data_var: str | None,
    config: str,
    file_data: str | None,
    file_size: str | None,
    var_size: str | None,
) -> tuple[Any, Any]:
    """``(client settings, full settings or their ConfigError)`` for one case."""
    case = tmp_path / "case"
    case.mkdir(parents=True)
    monkeypatch.chdir(case)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(case / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(case / "xdg-data"))
    config_path = _case(case, config, file_data, file_size)
    environ = {"HOME": str(case / "home"), "PLACE": str(case / "place")}
    if data_var is not None:
        environ["IMGWATCH_DATA_DIR"] = data_var
    if var_size is not None:
        environ["imgwatch_max_file_bytes"] = var_size  # names are folded, as pydantic-settings does
    if config == "variable":
        environ["IMGWATCH_CONFIG"] = str(config_path)
    flag_config = config_path if config in ("flag", "missing", "broken", "unknown-key") else None
    if config == "relative-flag":
        assert config_path is not None
        # Relative to the working directory, the file's data_dir relative to the file's folder.
        flag_config = config_path.relative_to(case)
    flag_data = Path(data_flag) if data_flag is not None else None

    def full() -> Any:
        explicit = {"data_dir": flag_data}
        return load_settings(explicit, environ=environ, config_file=flag_config)

    quick = client_settings(flag_data, flag_config, full, environ)
    try:
        whole: Any = full()
    except ConfigError as e:
        whole = e
    return quick, whole


@pytest.mark.parametrize(
    ("data_flag", "data_var", "config"), list(itertools.product(DATA_FLAGS, DATA_VARS, CONFIGS))
)
def test_the_thin_client_agrees_with_the_full_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_flag: str | None, data_var: str | None, config: str
) -> None:
    answered = 0
    for n, (file_data, file_size, var_size) in enumerate(itertools.product(FILE_DATA, FILE_SIZES, VAR_SIZES)):
        with monkeypatch.context() as patch:
            quick, whole = _both(
                tmp_path / str(n), patch, data_flag, data_var, config, file_data, file_size, var_size
            )
        if quick is None:
            continue
        answered += 1
        assert not isinstance(whole, ConfigError), (whole, quick)
        assert (quick.data_dir, quick.max_file_bytes) == (whole.data_dir, whole.max_file_bytes)
    # The plain cases are answered without the full settings, not all left to them.
    if config not in ("missing", "broken", "unknown-key") and data_var != "$UNSET/x":
        assert answered > 0


def test_plain_settings_are_answered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quick, whole = _both(tmp_path, monkeypatch, None, None, "default", '"~/pictures-index"', "1000", None)
    assert quick is not None and quick.data_dir == tmp_path / "case" / "home" / "pictures-index"
    assert quick.max_file_bytes == 1000 == whole.max_file_bytes


def test_the_setting_names_are_the_model_s() -> None:
    from imgwatch.config import Settings

    assert set(Settings.model_fields) - {"config_file"} == SETTING_NAMES


def test_the_thin_client_imports_no_pydantic(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from imgwatch.config.client import client_settings;"
        "s = client_settings(None, None, lambda: None); print(s.data_dir);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_settings')))"
    )
    env = {**os.environ, "IMGWATCH_DATA_DIR": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "none")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [str(tmp_path), "[]"]
