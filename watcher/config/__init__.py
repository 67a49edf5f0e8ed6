"""Settings: one frozen object, declared once, resolved as flag > environment > config file > default.

Two classes share one declaration of the fields and their checks:

- ``Settings`` (``model.py``, its rules in ``checks.py``) is a plain frozen pydantic model: the
  values, their types and their rules. Building it directly (tests, benchmarks:
  ``Settings(data_dir=..., weights="random:0")``) reads nothing but its arguments: no environment,
  no config file, and paths are taken as given; a bad argument is a pydantic ``ValidationError`` (a
  programming error, not a user's). ``settings.replace(...)`` is a checked copy.
- ``Sources`` (``sources.py``) adds pydantic-settings' ``BaseSettings`` to it, and only
  ``load_settings`` (``load.py``) builds one: flags, then the environment (``IMGWATCH_<SETTING>``),
  then the TOML config file, then the defaults. The result is copied into a plain ``Settings``, so
  no caller ever holds an object that re-reads anything.

Keeping the two apart, rather than switching the sources off for direct construction, means a test's
``Settings(...)`` cannot pick up a developer's ``IMGWATCH_*`` variables or config file by accident.

Paths (``data_dir``, ``roots``, ``poll_roots``, ``protect``, the ``s3_mounts`` directories,
``weights`` when it is a file, the config file's own path) are made absolute once, by the source that
read them (``paths.py``). Every error is a ``ConfigError`` that names where the value came from: the flag
(``--batch-size``), the variable (``IMGWATCH_BATCH_SIZE``) or the config file. Secrets
(``SECRET_SETTINGS``) appear neither in ``repr()`` nor in those errors.

The environment variable names and the choices live in ``imgwatch.names`` (no pydantic, for the
CLI's parser) and are re-exported here, where every caller has always found them.
"""

from typing import TYPE_CHECKING, Any

from imgwatch.config.paths import default_config_file, default_data_dir
from imgwatch.names import (
    DEVICES,
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_DEVICE,
    ENV_MILVUS_TOKEN,
    ENV_MILVUS_URI,
    ENV_NODE,
    ENV_PCA,
    ENV_PREFIX,
    ENV_SEARCH_PAGE,
    ENV_VARS,
    ENV_WEBHOOK_HMAC_SECRET,
    ENV_WEBHOOK_TOKEN,
    ENV_WEIGHTS,
    INDEX_TYPES,
    PRECISIONS,
)

if TYPE_CHECKING:
    from imgwatch.config.checks import DEFAULT_JOBS, JOB_NAMES
    from imgwatch.config.load import load_settings
    from imgwatch.config.model import DEFAULT_MAX_PIXELS, SECRET_SETTINGS, Settings

#: Imported on first use (PEP 562): a thin client imports ``imgwatch.config.client``, and with it this
#: package, but must not pay for pydantic (~0.2 s).
_LAZY = {
    "DEFAULT_JOBS": "imgwatch.config.checks",
    "JOB_NAMES": "imgwatch.config.checks",
    "load_settings": "imgwatch.config.load",
    "DEFAULT_MAX_PIXELS": "imgwatch.config.model",
    "SECRET_SETTINGS": "imgwatch.config.model",
    "Settings": "imgwatch.config.model",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_JOBS",
    "DEFAULT_MAX_PIXELS",
    "DEVICES",
    "ENV_CONFIG",
    "ENV_DATA_DIR",
    "ENV_DEVICE",
    "ENV_MILVUS_TOKEN",
    "ENV_MILVUS_URI",
    "ENV_NODE",
    "ENV_PCA",
    "ENV_PREFIX",
    "ENV_SEARCH_PAGE",
    "ENV_VARS",
    "ENV_WEBHOOK_HMAC_SECRET",
    "ENV_WEBHOOK_TOKEN",
    "ENV_WEIGHTS",
    "INDEX_TYPES",
    "JOB_NAMES",
    "PRECISIONS",
    "SECRET_SETTINGS",
    "Settings",
    "default_config_file",
    "default_data_dir",
    "load_settings",
]
