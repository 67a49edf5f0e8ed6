"""Settings: one frozen object, resolved as explicit flag > environment > config file > default."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from imgwatch.errors import ConfigError

ENV_DATA_DIR = "IMGWATCH_DATA_DIR"
ENV_WEIGHTS = "IMGWATCH_WEIGHTS"
ENV_MILVUS_URI = "IMGWATCH_MILVUS_URI"
ENV_MILVUS_TOKEN = "IMGWATCH_MILVUS_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_CONFIG = "IMGWATCH_CONFIG"
ENV_DEVICE = "IMGWATCH_DEVICE"
ENV_PCA = "IMGWATCH_PCA"
ENV_NODE = "IMGWATCH_NODE"
ENV_WEBHOOK_TOKEN = "IMGWATCH_WEBHOOK_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_WEBHOOK_HMAC_SECRET = "IMGWATCH_WEBHOOK_HMAC_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_SEARCH_PAGE = "IMGWATCH_SEARCH_PAGE"

#: Which setting each environment variable feeds.
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


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to build the services. Immutable once resolved."""

    data_dir: Path = field(default_factory=default_data_dir)
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
    index_params: Mapping[str, Any] = field(default_factory=dict)
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
    s3_mounts: Mapping[str, str] = field(default_factory=dict)
    """S3/MinIO bucket name -> local directory where that bucket's objects appear."""
    jobs: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(DEFAULT_JOBS))
    """When the daemon runs its maintenance jobs: APScheduler trigger name and arguments per job."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = 512 * 1024 * 1024
    config_file: Path | None = None

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


_FIELD_NAMES = {f.name for f in fields(Settings)}
_PATH_FIELDS = {"data_dir"}
_TUPLE_FIELDS = {"include", "exclude", "roots", "poll_roots"}


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Resolve settings: ``explicit`` (flags; ``None`` values are ignored) > ``environ`` > file > default.

    The config file is ``config_file``, else ``$IMGWATCH_CONFIG``, else the XDG config file if present.
    """
    environ = os.environ if environ is None else environ
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    unknown = set(explicit) - _FIELD_NAMES
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")

    path = config_file or (Path(environ[ENV_CONFIG]) if environ.get(ENV_CONFIG) else None)
    from_file: dict[str, Any] = {}
    if path is not None:
        from_file = _read_config_file(path, must_exist=True)
    elif default_config_file().is_file():
        path = default_config_file()
        from_file = _read_config_file(path, must_exist=False)

    from_env = {name: environ[var] for name, var in ENV_VARS.items() if environ.get(var)}
    merged: dict[str, Any] = {**from_file, **from_env, **explicit}
    merged["config_file"] = path
    return _validated(merged, str(path) if path else "arguments")


def _read_config_file(path: Path, *, must_exist: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(str(path), "file not found") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(path), str(e)) from e
    unknown = set(raw) - _FIELD_NAMES - {"config_file"}
    if unknown:
        raise ConfigError(str(path), f"unknown keys {sorted(unknown)}; known keys are {sorted(_FIELD_NAMES)}")
    if "data_dir" in raw:
        raw["data_dir"] = Path(raw["data_dir"]).expanduser()
    return raw


def _validated(values: dict[str, Any], source: str) -> Settings:
    for name in ("webhook_token", "webhook_hmac_secret", "milvus_token", "webhook", "milvus_uri"):
        if values.get(name) == "":
            values[name] = None  # an empty secret is no secret: treat it as unset, never as "any"
    if values.get("search_page") == "":
        values["search_page"] = None  # `search_page = ""` in the config file: off, like unset
    for name in _PATH_FIELDS & values.keys():
        values[name] = Path(values[name]).expanduser().absolute()
    for name in _TUPLE_FIELDS & values.keys():
        value = values[name]
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ConfigError(source, f"{name} must be a list of strings")
        values[name] = tuple(value)
    choices = {"device": DEVICES, "precision": PRECISIONS, "index_type": INDEX_TYPES}
    for name, allowed in choices.items():
        if name in values:
            values[name] = str(values[name]).lower() if name != "index_type" else str(values[name]).upper()
            if values[name] not in allowed:
                raise ConfigError(source, f"{name} must be one of {', '.join(allowed)}, not {values[name]!r}")
    if "s3_mounts" in values:
        mounts = values["s3_mounts"]
        if not isinstance(mounts, Mapping) or not all(isinstance(v, str) for v in mounts.values()):
            raise ConfigError(source, 's3_mounts must be a table of bucket = "/local/directory"')
        values["s3_mounts"] = {str(k): os.path.abspath(os.path.expanduser(v)) for k, v in mounts.items()}
    if "jobs" in values:
        jobs = values["jobs"]
        if not isinstance(jobs, Mapping) or set(jobs) - JOB_NAMES:
            raise ConfigError(source, f"jobs must be a table with entries among {sorted(JOB_NAMES)}")
        for name, spec in jobs.items():
            if not isinstance(spec, Mapping) or spec.get("trigger") not in ("interval", "cron", "off"):
                raise ConfigError(source, f'jobs.{name} needs trigger = "interval", "cron" or "off"')
        values["jobs"] = {**DEFAULT_JOBS, **jobs}
    positive = ("batch_size", "max_pixels", "max_file_bytes", "mass_delete_min_files", "webhook_max_bytes")
    for name in (*positive, "search_page_max_bytes"):
        if name in values and (not isinstance(values[name], int) or values[name] < 1):
            raise ConfigError(source, f"{name} must be a positive integer, not {values[name]!r}")
    if values.get("pca") in (0, "off", "none"):
        values["pca"] = None
    elif "pca" in values:
        try:
            values["pca"] = int(values["pca"])
        except (TypeError, ValueError):
            raise ConfigError(
                source, f"pca must be a number of dimensions or off, not {values['pca']!r}"
            ) from None
        if not 16 <= values["pca"] < 4096:
            raise ConfigError(source, f"pca must be between 16 and 4095 dimensions, not {values['pca']}")
    for name in ("poll_interval", "settle_seconds", "mass_delete_fraction"):
        if name in values and (not isinstance(values[name], int | float) or values[name] <= 0):
            raise ConfigError(source, f"{name} must be a positive number, not {values[name]!r}")
    return Settings(**values)
