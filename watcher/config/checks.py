"""The rules a setting's value must follow, as plain functions the ``Settings`` validators call.

Each takes the value as given (and, for the ``wrap`` validators, pydantic's own parsing as
``handler``) and returns the checked value or raises :func:`problem`. They are idempotent: a checked
value passes again unchanged, so ``Settings.replace`` and the copy out of the sources can run them
again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import PydanticCustomError

from imgwatch.names import DEVICES, INDEX_TYPES, PRECISIONS

#: Maintenance schedule: reconcile hourly, compaction nightly (at a quiet minute).
DEFAULT_JOBS: Mapping[str, Mapping[str, Any]] = {
    "reconcile": {"trigger": "interval", "hours": 1},
    "compact": {"trigger": "cron", "hour": 3, "minute": 17},
}
JOB_NAMES = frozenset(DEFAULT_JOBS)
TRIGGERS = ("interval", "cron", "off")

POSITIVE_INTS = (
    "batch_size",
    "max_pixels",
    "max_file_bytes",
    "mass_delete_min_files",
    "exact_search_up_to",
    "webhook_max_bytes",
    "search_page_max_bytes",
)
POSITIVE_NUMBERS = ("poll_interval", "settle_seconds", "mass_delete_fraction")
CHOICES: Mapping[str, tuple[str, ...]] = {
    "device": DEVICES,
    "precision": PRECISIONS,
    "index_type": INDEX_TYPES,
}

#: The pydantic error type of every problem raised here; ``load_settings`` reports its message as is.
PROBLEM_TYPE = "imgwatch_setting"


def problem(message: str) -> PydanticCustomError:
    # The message travels as context, not as the template: a value's repr may hold braces.
    return PydanticCustomError(PROBLEM_TYPE, "{problem}", {"problem": message})


def strings(name: str, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise problem(f"{name} must be a list of strings, not {value!r}") from None


def absolute_folders(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    """Folders as absolute, normalised paths. The sources made them absolute (``~`` expanded); a
    relative one here came from code, and would protect whatever the working directory holds."""
    for folder in value:
        if not os.path.isabs(folder):
            raise problem(f"{name} must list absolute folders, not {folder!r}")
    return tuple(os.path.normpath(folder) for folder in value)


def choice(name: str, value: Any) -> str:
    allowed = CHOICES[name]
    folded = str(value).upper() if name == "index_type" else str(value).lower()
    if folded not in allowed:
        raise problem(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return folded


def positive_int(name: str, value: Any, handler: ValidatorFunctionWrapHandler) -> int:
    refused = problem(f"{name} must be a positive integer, not {value!r}")
    if isinstance(value, bool):  # pydantic would take `batch_size = true` as 1
        raise refused
    try:
        number: int = handler(value)
    except ValidationError:
        raise refused from None
    if number < 1:
        raise refused
    return number


def positive_number(name: str, value: Any, handler: ValidatorFunctionWrapHandler) -> float:
    refused = problem(f"{name} must be a positive number, not {value!r}")
    if isinstance(value, bool):
        raise refused
    try:
        number: float = handler(value)
    except ValidationError:
        raise refused from None
    if not (math.isfinite(number) and number > 0):  # "nan" and "inf" parse as floats
        raise refused
    return number


def boolean(name: str, value: Any, handler: ValidatorFunctionWrapHandler) -> bool:
    # pydantic's own parsing: true/false, yes/no, on/off, 1/0 (any case); anything else is refused.
    try:
        flag: bool = handler(value)
    except ValidationError:
        raise problem(f"{name} must be true or false, not {value!r}") from None
    return flag


def pca(value: Any, handler: ValidatorFunctionWrapHandler) -> int | Literal["auto"] | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    refused = problem(f"pca must be a number of dimensions, auto or off, not {value!r}")
    if isinstance(value, bool):
        raise refused
    try:
        dimensions: int | None = handler(value)
    except ValidationError:
        raise refused from None
    if dimensions == 0:
        return None
    if dimensions is None or not 16 <= dimensions < 4096:
        raise problem(f"pca must be between 16 and 4095 dimensions, not {dimensions}")
    return dimensions


def s3_mounts(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise problem('s3_mounts must be a table of bucket = "/local/directory"')
    return {str(bucket): directory for bucket, directory in value.items()}


def jobs(value: Any) -> dict[str, Mapping[str, Any]]:
    """The schedule with the defaults filled in. A trigger's own arguments are APScheduler's to check:
    the daemon reports the ones it refuses (as a ``ConfigError`` naming ``jobs.NAME``) at start."""
    if not isinstance(value, Mapping) or set(value) - JOB_NAMES:
        raise problem(f"jobs must be a table with entries among {sorted(JOB_NAMES)}")
    for name, spec in value.items():
        if not isinstance(spec, Mapping) or spec.get("trigger") not in TRIGGERS:
            raise problem(f'jobs.{name} needs trigger = "interval", "cron" or "off"')
    return {**DEFAULT_JOBS, **value}
