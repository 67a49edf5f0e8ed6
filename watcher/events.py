"""Typed events: what happened to an image file. Sources produce them; handlers consume them.

Paths are absolute, in :func:`os.fsdecode` form (undecodable bytes become surrogate escapes), so
every file name round-trips exactly. Equality and hashing ignore the timestamp, so the copies of
one change that a burst produces collapse in a set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


def _now() -> datetime:
    return datetime.now(UTC)


class Source(StrEnum):
    SCAN = "scan"
    """A walk of a root compared with the catalog (``imgwatch index``, the daemon's catch-up)."""
    FILESYSTEM = "filesystem"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class ImageEvent:
    source: Source = field(default=Source.SCAN, kw_only=True)
    occurred_at: datetime = field(default_factory=_now, compare=False, kw_only=True)
    """When the change was observed (UTC)."""


@dataclass(frozen=True)
class ImageCreated(ImageEvent):
    path: str
    """Absolute path of a file that appeared."""


@dataclass(frozen=True)
class ImageModified(ImageEvent):
    path: str
    """Absolute path of a file whose content may have changed."""


@dataclass(frozen=True)
class ImageDeleted(ImageEvent):
    path: str
    """Absolute path of a file that is gone."""


@dataclass(frozen=True)
class ImageMoved(ImageEvent):
    src_path: str
    dest_path: str


class Outcome(StrEnum):
    """What handling one event did; the ``index`` summary counts these."""

    ADDED = "added"
    UPDATED = "updated"
    MOVED = "moved"
    REMOVED = "removed"
    UNCHANGED = "unchanged"
    FAILED = "failed"
