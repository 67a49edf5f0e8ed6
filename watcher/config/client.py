"""The settings a thin client needs, found without pydantic: where the data dir is, and how big a
query file may be.

With a daemon running, ``search`` and ``status`` only read their query files and talk to the
daemon's socket; loading the whole ``Settings`` (pydantic and pydantic-settings) would cost them
~0.2 s, most of what they take. :func:`client_settings` finds those two values by the same rules
as ``load_settings`` (flag > environment > config file > default; paths made absolute by
``imgwatch.config.paths``), and gives up, returning None, on anything that is not plain: an
unreadable or invalid config file, an unknown key, a value of an odd type. The caller then loads
the full settings, whose errors name their source. ``tests/test_client_settings.py`` checks that both
agree wherever this one answers.

The other settings are the daemon's: a thin client does not read them, so a bad value of one of
them there is reported by the commands that use it, not by ``search``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgwatch.config.paths import (
    DEFAULT_MAX_FILE_BYTES,
    PathError,
    absolute,
    default_config_file,
    default_data_dir,
)
from imgwatch.names import ENV_CONFIG, ENV_DATA_DIR, ENV_PREFIX, SETTING_NAMES

if TYPE_CHECKING:
    from imgwatch.config.model import Settings


@dataclass(frozen=True)
class ClientSettings:
    """What a thin client reads; :meth:`full` loads every setting when it turns out to need them
    (no daemon answers, so the command does the work itself)."""

    data_dir: Path
    max_file_bytes: int
    load: Callable[[], Settings] = field(repr=False, compare=False)

    def full(self) -> Settings:
        return self.load()


def client_settings(
    data_dir_flag: Path | None,
    config_flag: Path | None,
    load: Callable[[], Settings],
    environ: Mapping[str, str] | None = None,
) -> ClientSettings | None:
    """The data dir and ``max_file_bytes``, or None when only the full settings can tell."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd()
    # As pydantic-settings reads the environment: names folded to lower case, empty values unset.
    env = {key.lower(): value for key, value in environ.items() if value != ""}
    try:
        config = _config_file(config_flag, environ, cwd)
        values = _read(config) if config is not None else {}
        if values is None:
            return None
        if data_dir_flag is not None:
            data_dir = Path(absolute(os.fspath(data_dir_flag), cwd, environ))
        elif (ENV_DATA_DIR.lower()) in env:
            data_dir = Path(absolute(env[ENV_DATA_DIR.lower()], cwd, environ))
        elif "data_dir" in values:
            if not isinstance(values["data_dir"], str) or not values["data_dir"]:
                return None
            assert config is not None
            data_dir = Path(absolute(values["data_dir"], config.parent, environ))
        else:
            data_dir = default_data_dir()
    except PathError:
        return None
    size = _max_file_bytes(env.get(f"{ENV_PREFIX}max_file_bytes".lower()), values.get("max_file_bytes"))
    if size is None:
        return None
    return ClientSettings(data_dir, size, load)


def _config_file(flag: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file ``load_settings`` would read; PathError when it would refuse it."""
    named = os.fspath(flag) if flag is not None else environ.get(ENV_CONFIG) or None
    if named is None:
        default = default_config_file()
        return default if default.is_file() else None
    path = Path(absolute(named, cwd, environ))
    if not path.is_file():
        raise PathError("not a file")
    return path


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return values if set(values) <= SETTING_NAMES else None


def _max_file_bytes(from_env: str | None, from_file: Any) -> int | None:
    if from_env is not None:
        # Digits only: whatever else pydantic would accept ("1_000", " 12 ") is left to it.
        value = int(from_env) if from_env.isascii() and from_env.isdigit() else None
    elif from_file is not None:
        value = from_file if type(from_file) is int else None
    else:
        value = DEFAULT_MAX_FILE_BYTES
    return value if value is not None and value > 0 else None
