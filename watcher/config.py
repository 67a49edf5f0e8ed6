"""Settings: one frozen object, declared once, resolved as flag > environment > config file > default.

Two classes share one declaration of the fields and their checks:

- ``Settings`` is a plain frozen pydantic model: the values, their types and their rules. Building
  it directly (tests, benchmarks: ``Settings(data_dir=..., weights="random:0")``) reads nothing but
  its arguments: no environment, no config file, and paths are taken as given; a bad argument is a
  pydantic ``ValidationError`` (a programming error, not a user's). ``settings.replace(...)`` is a
  checked copy, where ``dataclasses.replace`` was used before.
- ``_Sources`` adds pydantic-settings' ``BaseSettings`` to it, and only ``load_settings`` builds one.
  Its ``settings_customise_sources`` declares the sources in order: the flags (init kwargs), the
  environment (``IMGWATCH_<SETTING>``), the TOML config file; the defaults come last. A whole value
  from a stronger source replaces a weaker one's (tables are not merged across sources). The result
  is copied into a plain ``Settings``, so no caller ever holds an object that re-reads anything.

Keeping the two apart, rather than switching the sources off for direct construction, means a test's
``Settings(...)`` cannot pick up a developer's ``IMGWATCH_*`` variables or config file by accident.

Paths (``data_dir``, ``roots``, ``poll_roots``, the ``s3_mounts`` directories, ``weights`` when it is
a file, the config file's own path) have ``~`` and ``$VAR``/``${VAR}`` expanded and are made absolute
once, by the source that read them, because only it knows what they are relative to: a relative
path in the config file is relative to the file's folder, a flag's or variable's to the working
directory (docs/decisions.md, "Settings on pydantic-settings"). A variable that is not set is an error.

Every error is a ``ConfigError`` that names where the value came from: the flag (``--batch-size``),
the variable (``IMGWATCH_BATCH_SIZE``) or the config file; each source records which settings it gave.
"""

from __future__ import annotations

import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from imgwatch.errors import ConfigError

#: Every setting NAME can be given as the environment variable IMGWATCH_<NAME> (upper case).
ENV_PREFIX = "IMGWATCH_"
ENV_DATA_DIR = "IMGWATCH_DATA_DIR"
ENV_WEIGHTS = "IMGWATCH_WEIGHTS"
ENV_MILVUS_URI = "IMGWATCH_MILVUS_URI"
ENV_MILVUS_TOKEN = "IMGWATCH_MILVUS_TOKEN"  # noqa: S105 - a variable name, not a secret
#: The config file, not a setting: it names where the file-settings come from.
ENV_CONFIG = "IMGWATCH_CONFIG"
ENV_DEVICE = "IMGWATCH_DEVICE"
ENV_PCA = "IMGWATCH_PCA"
ENV_NODE = "IMGWATCH_NODE"
ENV_WEBHOOK_TOKEN = "IMGWATCH_WEBHOOK_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_WEBHOOK_HMAC_SECRET = "IMGWATCH_WEBHOOK_HMAC_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_SEARCH_PAGE = "IMGWATCH_SEARCH_PAGE"

#: The documented variables (systemd/imgwatch.env.example) and the setting each feeds. Any other
#: setting may be given as IMGWATCH_<NAME> too; lists and tables as JSON.
ENV_VARS: Mapping[str, str] = {
    "data_dir": ENV_DATA_DIR,
    "weights": ENV_WEIGHTS,
    "milvus_uri": ENV_MILVUS_URI,
    "milvus_token": ENV_MILVUS_TOKEN,
    "device": ENV_DEVICE,
    "pca": ENV_PCA,
    "node": ENV_NODE,
    "webhook_token": ENV_WEBHOOK_TOKEN,
    "webhook_hmac_secret": ENV_WEBHOOK_HMAC_SECRET,
    "search_page": ENV_SEARCH_PAGE,
}

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ", "AUTOINDEX")

#: Maintenance schedule: reconcile hourly, compaction nightly (at a quiet minute).
DEFAULT_JOBS: Mapping[str, Mapping[str, Any]] = {
    "reconcile": {"trigger": "interval", "hours": 1},
    "compact": {"trigger": "cron", "hour": 3, "minute": 17},
}
JOB_NAMES = frozenset(DEFAULT_JOBS)

#: Pillow's own decompression-bomb threshold; a 48 MP photo is well inside it.
DEFAULT_MAX_PIXELS = 89_478_485


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("imgwatch", appauthor=False))


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir("imgwatch", appauthor=False)) / "config.toml"


def _problem(message: str) -> PydanticCustomError:
    # The message travels as context, not as the template: a value's repr may hold braces.
    return PydanticCustomError("imgwatch_setting", "{problem}", {"problem": message})


_POSITIVE_INTS = (
    "batch_size",
    "max_pixels",
    "max_file_bytes",
    "mass_delete_min_files",
    "webhook_max_bytes",
    "search_page_max_bytes",
)
_POSITIVE_NUMBERS = ("poll_interval", "settle_seconds", "mass_delete_fraction")
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "device": DEVICES,
    "precision": PRECISIONS,
    "index_type": INDEX_TYPES,
}


class Settings(BaseModel):
    """Everything a command needs to build the services. Immutable once resolved."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    """Where the catalog (SQLite), the Milvus Lite file and the daemon's lock live."""
    weights: str = "imagenet"
    """``imagenet``, a path to a VGG16 state-dict file, or ``random:SEED`` (tests/offline demos only)."""
    milvus_uri: str | None = None
    """A Milvus server (``http://host:19530``); ``None`` means Milvus Lite at ``data_dir/vectors.db``."""
    milvus_token: str | None = None
    collection: str = "imgwatch"
    node: str | None = None
    """This watcher's name when several share one Milvus collection (each with its own catalog and
    roots): its entities' keys are scoped to it, results from others say which node they came from,
    and its reconcile touches only its own. None: alone in its collection."""
    device: str = "auto"
    precision: str = "auto"
    """``auto`` picks bf16 on CPUs with AMX/avx512-bf16 (after a cosine check), fp16 on CUDA, else fp32."""
    batch_size: int = 16
    pca: int | None = None
    """Project vectors to this many dimensions with PCA fitted on the index (256 or 512 are typical);
    ``None`` keeps the model's 4096. Changing it reindexes in the background (see README)."""
    index_type: str = "FLAT"
    index_params: Mapping[str, Any] = Field(default_factory=dict)
    include: tuple[str, ...] = ()
    """Glob patterns a file's path relative to its root (or its name) must match; empty means all."""
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_symlinks: bool = False
    """Descend into symlinked directories (with loop detection). Symlinked files are always indexed."""
    roots: tuple[str, ...] = ()
    """Folders ``imgwatch watch`` watches when none are given on the command line."""
    poll: bool = False
    """Poll every root instead of using inotify (network filesystems are polled anyway)."""
    poll_roots: tuple[str, ...] = ()
    """Roots to poll even though inotify looks available."""
    poll_interval: float = 5.0
    settle_seconds: float = 1.0
    """How long a file written without a close event must stay unchanged before it is read."""
    mass_delete_fraction: float = 0.5
    """Deletions of more than this share of a root's files at once are held back (see README)."""
    mass_delete_min_files: int = 20
    webhook: str | None = None
    """``HOST:PORT`` for the HTTP event endpoint of ``imgwatch watch``; off when unset."""
    webhook_token: str | None = None
    """Shared secret callers send as ``Authorization: Bearer TOKEN``."""
    webhook_hmac_secret: str | None = None
    """When set, callers must also sign each body: ``X-Imgwatch-Signature: sha256=<hex HMAC>``."""
    webhook_max_bytes: int = 1024 * 1024
    metrics_public: bool = False
    """Serve the webhook port's ``/metrics`` without the token even off loopback (a trusted scraper)."""
    search_page: str | None = None
    """``HOST:PORT`` for the daemon's search page; off when unset. Off loopback it needs ``webhook_token``."""
    search_page_max_bytes: int = 32 * 1024 * 1024
    """Largest query image the search page accepts (a phone photo is 3-15 MB)."""
    s3_mounts: Mapping[str, str] = Field(default_factory=dict)
    """S3/MinIO bucket name -> local directory where that bucket's objects appear."""
    jobs: Mapping[str, Mapping[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_JOBS))
    """When the daemon runs its maintenance jobs: APScheduler trigger name and arguments per job."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = 512 * 1024 * 1024
    config_file: Path | None = None
    """The config file these settings were read from (``load_settings``); not itself a file setting."""

    @property
    def vectors_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "vectors.db")

    @property
    def uses_milvus_lite(self) -> bool:
        # The same schemes as MilvusVectorStore: a unix: socket is a server too (the tests reach theirs so).
        server = ("http://", "https://", "tcp://", "unix:")
        return self.milvus_uri is None or not self.milvus_uri.startswith(server)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked as a new ``Settings`` is (``model_copy`` would not check)."""
        return Settings.model_validate(
            {**{name: getattr(self, name) for name in Settings.model_fields}, **changes}
        )

    # The checks. They are idempotent (a checked value passes again unchanged), so ``replace`` and
    # the copy out of ``_Sources`` can run them again.

    @field_validator(
        "webhook_token",
        "webhook_hmac_secret",
        "milvus_token",
        "webhook",
        "milvus_uri",
        "search_page",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty secret is no secret: unset, never "any". `search_page = ""` is off, like unset.
        return None if value == "" else value

    @field_validator("include", "exclude", "roots", "poll_roots", mode="wrap")
    @classmethod
    def _strings(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _problem(f"{info.field_name} must be a list of strings, not {value!r}") from None

    @field_validator(*_CHOICES, mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> str:
        name = str(info.field_name)
        allowed = _CHOICES[name]
        folded = str(value).upper() if name == "index_type" else str(value).lower()
        if folded not in allowed:
            raise _problem(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        return folded

    @field_validator(*_POSITIVE_INTS, mode="wrap")
    @classmethod
    def _positive_int(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> int:
        problem = _problem(f"{info.field_name} must be a positive integer, not {value!r}")
        if isinstance(value, bool):  # pydantic would take `batch_size = true` as 1
            raise problem
        try:
            number: int = handler(value)
        except ValidationError:
            raise problem from None
        if number < 1:
            raise problem
        return number

    @field_validator(*_POSITIVE_NUMBERS, mode="wrap")
    @classmethod
    def _positive_number(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> float:
        problem = _problem(f"{info.field_name} must be a positive number, not {value!r}")
        if isinstance(value, bool):
            raise problem
        try:
            number: float = handler(value)
        except ValidationError:
            raise problem from None
        if not (math.isfinite(number) and number > 0):  # "nan" and "inf" parse as floats
            raise problem
        return number

    @field_validator("include_hidden", "follow_symlinks", "poll", mode="wrap")
    @classmethod
    def _boolean(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> bool:
        # pydantic's own parsing: true/false, yes/no, on/off, 1/0 (any case); anything else is refused.
        try:
            flag: bool = handler(value)
        except ValidationError:
            raise _problem(f"{info.field_name} must be true or false, not {value!r}") from None
        return flag

    @field_validator("pca", mode="wrap")
    @classmethod
    def _pca(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none")):
            return None
        problem = _problem(f"pca must be a number of dimensions or off, not {value!r}")
        if isinstance(value, bool):
            raise problem
        try:
            dimensions: int | None = handler(value)
        except ValidationError:
            raise problem from None
        if dimensions == 0:
            return None
        if dimensions is None or not 16 <= dimensions < 4096:
            raise _problem(f"pca must be between 16 and 4095 dimensions, not {dimensions}")
        return dimensions

    @field_validator("s3_mounts", mode="before")
    @classmethod
    def _s3_mounts(cls, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise _problem('s3_mounts must be a table of bucket = "/local/directory"')
        return {str(bucket): directory for bucket, directory in value.items()}

    @field_validator("jobs", mode="before")
    @classmethod
    def _jobs(cls, value: Any) -> dict[str, Mapping[str, Any]]:
        if not isinstance(value, Mapping) or set(value) - JOB_NAMES:
            raise _problem(f"jobs must be a table with entries among {sorted(JOB_NAMES)}")
        for name, spec in value.items():
            if not isinstance(spec, Mapping) or spec.get("trigger") not in ("interval", "cron", "off"):
                raise _problem(f'jobs.{name} needs trigger = "interval", "cron" or "off"')
        return {**DEFAULT_JOBS, **value}


# --- load_settings: the sources --------------------------------------------------------------------

_PATH_LIST_FIELDS = frozenset({"roots", "poll_roots"})
_LIST_FIELDS = frozenset({"include", "exclude", *_PATH_LIST_FIELDS})
#: Found by ``load_settings`` before the sources are read, so never a value in one of them.
_NOT_A_SOURCE_SETTING = "config_file"
_VARIABLE = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


@dataclass
class _Load:
    """One call of ``load_settings``: what the sources read from, and which source gave each setting."""

    environ: Mapping[str, str]
    config_file: Path | None
    flags: Mapping[str, str]
    origins: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str) -> str:
        return self.flags.get(name, f"argument {name}")


# settings_customise_sources is a classmethod: this is how one call's environ and file reach it.
_CURRENT_LOAD: ContextVar[_Load] = ContextVar("imgwatch_settings_load")


class _PathError(Exception):
    """A path setting that cannot be made absolute; the caller knows which source to blame."""


def _absolute(text: str, base: Path, environ: Mapping[str, str]) -> str:
    """``text`` with ``~`` and ``$VAR``/``${VAR}`` expanded (from ``environ``), absolute against ``base``."""
    if text == "~" or text.startswith("~/"):
        # HOME from the same environment as the variables; a service without HOME still has a home.
        home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        text = home + text[1:]
    elif text.startswith("~"):
        user = text[1:].split("/", 1)[0]
        text = os.path.expanduser(text)
        if text.startswith("~"):
            raise _PathError(f"there is no user {user!r} for ~{user}")

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            # Left as it is, "$X/photos" would become a folder named "$X" next to the config file.
            raise _PathError(f"${name} is not set")
        return environ[name]

    # Like a shell: `~` first, and what a variable holds is not expanded again.
    text = _VARIABLE.sub(variable, text)
    # normpath, as the CLI's roots get (os.path.abspath): `poll_roots` must compare equal to them.
    return os.path.normpath(os.path.join(base, text))


def _is_weights_file(value: str) -> bool:
    return value != "imagenet" and not value.startswith("random:")


def _resolve_paths(name: str, value: Any, base: Path, environ: Mapping[str, str]) -> Any:
    """``value`` with its paths made absolute; values of the wrong shape are left for the checks."""

    def one(path: Any) -> Any:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            return path
        if not path:
            raise _PathError("an empty path")
        return _absolute(path, base, environ)

    if name == "data_dir" or (name == "weights" and isinstance(value, str) and _is_weights_file(value)):
        return one(value)
    if name in _PATH_LIST_FIELDS and isinstance(value, list | tuple):
        return [one(path) for path in value]
    if name == "s3_mounts" and isinstance(value, Mapping):
        return {bucket: one(directory) for bucket, directory in value.items()}
    return value


class _Labelled(PydanticBaseSettingsSource):
    """A source's values with their paths resolved, each recorded as coming from ``label(name)``."""

    def __init__(
        self,
        inner: PydanticBaseSettingsSource,
        load: _Load,
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
            if name in self.current_state or name == _NOT_A_SOURCE_SETTING:
                continue
            try:
                values[name] = _resolve_paths(name, value, self._base, self._load.environ)
            except _PathError as e:
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
        known = set(Settings.model_fields) - {_NOT_A_SOURCE_SETTING}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(
                str(file_path), f"unknown keys {sorted(unknown)}; known keys are {sorted(known)}"
            )
        return raw


class _Sources(Settings, BaseSettings):
    """``Settings`` from flags > environment > config file > default; only ``load_settings`` builds one."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        env_ignore_empty=True,  # as before: IMGWATCH_X= in an env file is the same as no line
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
        load = _CURRENT_LOAD.get()
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
    load = _Load(environ, None, flags or {})
    named = given.pop(_NOT_A_SOURCE_SETTING, None)
    load.config_file = _config_file(named if config_file is None else config_file, load)

    token = _CURRENT_LOAD.set(load)
    try:
        resolved = _Sources(**given)
    except ValidationError as e:
        raise _config_error(e, load.origins) from None
    finally:
        _CURRENT_LOAD.reset(token)
    values = {name: getattr(resolved, name) for name in Settings.model_fields}
    # Checked already, by the same validators: no second pass.
    return Settings.model_construct(**{**values, "config_file": load.config_file})


def _config_file(named: Any, load: _Load) -> Path | None:
    if named is not None:
        where, text = load.flag(_NOT_A_SOURCE_SETTING), os.fspath(named)
    elif load.environ.get(ENV_CONFIG):
        where, text = f"environment variable {ENV_CONFIG}", load.environ[ENV_CONFIG]
    else:
        default = default_config_file()
        return default if default.is_file() else None
    try:
        path = Path(_absolute(text, Path.cwd(), load.environ))
    except _PathError as e:
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
    if first["type"] == "imgwatch_setting":
        problem = first["msg"]  # ours: it names the setting and the value
    else:
        problem = f"{name}: {first['msg']}, not {first['input']!r}"
    return ConfigError(source, problem)
