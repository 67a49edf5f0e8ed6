"""Where settings come from: pydantic-settings sources for the flags, the environment and the file.

``Sources`` adds pydantic-settings' ``BaseSettings`` to ``Settings``, and only ``load_settings``
builds one. Its ``settings_customise_sources`` declares the sources in order: the flags (init
kwargs), the environment (``IMGWATCH_<SETTING>``), the TOML config file; the defaults come last. A
whole value from a stronger source replaces a weaker one's (tables are not merged across sources).
Each source makes its paths absolute (``imgwatch.config.paths``) and records which settings it gave,
so that an error can name the flag, the variable or the file a bad value came from.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from imgwatch.config.model import Settings
from imgwatch.config.paths import PATH_LIST_FIELDS, PathError, resolve_paths
from imgwatch.errors import ConfigError
from imgwatch.names import ENV_PREFIX

_LIST_FIELDS = frozenset({"include", "exclude", *PATH_LIST_FIELDS})
#: Found by ``load_settings`` before the sources are read, so never a value in one of them.
NOT_A_SOURCE_SETTING = "config_file"


@dataclass
class Load:
    """One call of ``load_settings``: what the sources read from, and which source gave each setting."""

    environ: Mapping[str, str]
    config_file: Path | None
    flags: Mapping[str, str]
    origins: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str) -> str:
        return self.flags.get(name, f"argument {name}")


# settings_customise_sources is a classmethod: this is how one call's environ and file reach it.
CURRENT_LOAD: ContextVar[Load] = ContextVar("imgwatch_settings_load")


class _Labelled(PydanticBaseSettingsSource):
    """A source's values with their paths resolved, each recorded as coming from ``label(name)``."""

    def __init__(
        self,
        inner: PydanticBaseSettingsSource,
        load: Load,
        base: Path,
        label: Callable[[str], str],
    ) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner
        self._load = load
        self._base = base
        self._label = label

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False  # __call__ does the work, from the wrapped source's

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in self._inner().items():
            # A stronger source's value replaces this one whole; pydantic-settings would deep-merge
            # tables (s3_mounts, jobs), and then one value would have come from two places.
            if name in self.current_state or name == NOT_A_SOURCE_SETTING:
                continue
            try:
                values[name] = resolve_paths(name, value, self._base, self._load.environ)
            except PathError as e:
                raise ConfigError(self._label(name), f"{name}: {e}") from None
            self._load.origins[name] = self._label(name)
        return values


class _Environment(EnvSettingsSource):
    """IMGWATCH_<NAME> from ``environ`` (not necessarily ``os.environ``); JSON for lists and tables."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        # As the base class parses os.environ: names folded (case_sensitive=False), empty means unset.
        self.env_vars = {key.lower(): value for key, value in environ.items() if value != ""}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as e:
            shape = 'a JSON list, e.g. ["a", "b"]' if field_name in _LIST_FIELDS else "a JSON object"
            raise ConfigError(
                _variable(field_name), f"{field_name} must be {shape}, not {value!r}: {e}"
            ) from None


def _variable(name: str) -> str:
    return f"environment variable {ENV_PREFIX}{name.upper()}"


class _TomlFile(TomlConfigSettingsSource):
    """The config file; a file that cannot be read or parsed, or that has unknown keys, is an error."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            with file_path.open("rb") as f:
                raw = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(str(file_path), str(e)) from e
        known = set(Settings.model_fields) - {NOT_A_SOURCE_SETTING}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(
                str(file_path), f"unknown keys {sorted(unknown)}; known keys are {sorted(known)}"
            )
        return raw


class Sources(Settings, BaseSettings):
    """``Settings`` from flags > environment > config file > default; only ``load_settings`` builds one."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_ignore_empty=True,  # as before: IMGWATCH_X= in an env file is the same as no line
        # The fields and their docstrings are Settings' (inherited as they are); looking for more in
        # this class's source would cost every command ~7 ms of parsing.
        use_attribute_docstrings=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        load = CURRENT_LOAD.get()
        cwd = Path.cwd()
        sources: list[PydanticBaseSettingsSource] = [
            _Labelled(init_settings, load, cwd, load.flag),
            _Labelled(_Environment(settings_cls, load.environ), load, cwd, _variable),
        ]
        if (path := load.config_file) is not None:
            toml = _TomlFile(settings_cls, toml_file=path)
            # Relative to the file's folder: under systemd the working directory is `/`.
            sources.append(_Labelled(toml, load, path.parent, lambda _name: str(path)))
        return tuple(sources)
