"""``load_settings``: the one way a command gets its settings, with errors that name their source."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from imgwatch.config.checks import PROBLEM_TYPE
from imgwatch.config.model import SECRET_SETTINGS, Settings
from imgwatch.config.paths import PathError, absolute, default_config_file
from imgwatch.config.sources import CURRENT_LOAD, NOT_A_SOURCE_SETTING, Load, Sources
from imgwatch.errors import ConfigError
from imgwatch.names import ENV_CONFIG


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    *,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: ``explicit`` (flags; ``None`` values are ignored) > ``environ`` > file > default.

    The config file is ``config_file``, else ``$IMGWATCH_CONFIG``, else the XDG config file if present.
    ``flags`` names the command-line flag of each explicit setting, for error messages.
    Raises ``ConfigError`` naming the flag, variable or file a bad value came from.
    """
    environ = os.environ if environ is None else environ
    given = {k: v for k, v in (explicit or {}).items() if v is not None}
    unknown = set(given) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    load = Load(environ, None, flags or {})
    named = given.pop(NOT_A_SOURCE_SETTING, None)
    load.config_file = _config_file(named if config_file is None else config_file, load)

    token = CURRENT_LOAD.set(load)
    try:
        resolved = Sources(**given)
    except ValidationError as e:
        raise _config_error(e, load.origins) from None
    finally:
        CURRENT_LOAD.reset(token)
    values = {name: getattr(resolved, name) for name in Settings.model_fields}
    # Checked already, by the same validators: no second pass.
    return Settings.model_construct(**{**values, "config_file": load.config_file})


def _config_file(named: Any, load: Load) -> Path | None:
    if named is not None:
        where, text = load.flag(NOT_A_SOURCE_SETTING), os.fspath(named)
    elif load.environ.get(ENV_CONFIG):
        where, text = f"environment variable {ENV_CONFIG}", load.environ[ENV_CONFIG]
    else:
        default = default_config_file()
        return default if default.is_file() else None
    try:
        path = Path(absolute(text, Path.cwd(), load.environ))
    except PathError as e:
        raise ConfigError(where, f"config file: {e}") from None
    if not path.is_file():
        reason = "not a file" if path.exists() else "file not found"
        raise ConfigError(str(path), f"{reason} (named by {where})")
    return path


def _config_error(error: ValidationError, origins: Mapping[str, str]) -> ConfigError:
    """The first problem, as a ``ConfigError`` from the source that gave the value."""
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    source = origins.get(name, "the defaults")
    if first["type"] == PROBLEM_TYPE:
        problem = first["msg"]  # ours: it names the setting and the value
    elif name in SECRET_SETTINGS:
        # The message goes to a terminal or the journal: say what is wrong, never what was given.
        problem = f"{name}: {first['msg']} (the value given is not shown: it is a secret)"
    else:
        problem = f"{name}: {first['msg']}, not {first['input']!r}"
    return ConfigError(source, problem)
