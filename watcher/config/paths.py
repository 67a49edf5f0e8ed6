"""Path settings made absolute once, by the source that read them.

Only the source knows what a relative path is relative to: a path in the config file is relative to
the file's folder, a flag's or a variable's to the working directory (docs/decisions.md, "Settings
on pydantic-settings"). ``~`` and ``$VAR``/``${VAR}`` are expanded, from the environment the
settings are loaded with; a variable that is not set is an error.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATH_LIST_FIELDS = frozenset({"roots", "poll_roots", "protect"})
#: The default of ``max_file_bytes``: here, without pydantic, for thin clients (``config.client``).
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
_VARIABLE = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


class PathError(Exception):
    """A path setting that cannot be made absolute; the caller knows which source to blame."""


def absolute(text: str, base: Path, environ: Mapping[str, str]) -> str:
    """``text`` with ``~`` and ``$VAR``/``${VAR}`` expanded (from ``environ``), absolute against ``base``."""
    if text == "~" or text.startswith("~/"):
        # HOME from the same environment as the variables; a service without HOME still has a home.
        home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        text = home + text[1:]
    elif text.startswith("~"):
        user = text[1:].split("/", 1)[0]
        text = os.path.expanduser(text)
        if text.startswith("~"):
            raise PathError(f"there is no user {user!r} for ~{user}")

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            # Left as it is, "$X/photos" would become a folder named "$X" next to the config file.
            raise PathError(f"${name} is not set")
        return environ[name]

    # Like a shell: `~` first, and what a variable holds is not expanded again.
    text = _VARIABLE.sub(variable, text)
    # normpath, as the CLI's roots get (os.path.abspath): `poll_roots` must compare equal to them.
    return os.path.normpath(os.path.join(base, text))


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("imgwatch", appauthor=False))


def default_config_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("imgwatch", appauthor=False)) / "config.toml"


def _is_weights_file(value: str) -> bool:
    return value != "imagenet" and not value.startswith("random:")


def resolve_paths(name: str, value: Any, base: Path, environ: Mapping[str, str]) -> Any:
    """``value`` with its paths made absolute; values of the wrong shape are left for the checks."""

    def one(path: Any) -> Any:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            return path
        if not path:
            raise PathError("an empty path")
        return absolute(path, base, environ)

    if name == "data_dir" or (name == "weights" and isinstance(value, str) and _is_weights_file(value)):
        return one(value)
    if name in PATH_LIST_FIELDS and isinstance(value, list | tuple):
        return [one(path) for path in value]
    if name == "s3_mounts" and isinstance(value, Mapping):
        return {bucket: one(directory) for bucket, directory in value.items()}
    return value
