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
    write_closed: bool = field(default=False, kw_only=True, compare=False)
    """The writer closed the file (inotify's close-after-write): no need to wait for it to settle."""


@dataclass(frozen=True)
class ImageModified(ImageEvent):
    path: str
    """Absolute path of a file whose content may have changed."""
    write_closed: bool = field(default=False, kw_only=True, compare=False)


@dataclass(frozen=True)
class ImageDeleted(ImageEvent):
    path: str
    """Absolute path of a file that is gone."""


@dataclass(frozen=True)
class ImageMoved(ImageEvent):
    src_path: str
    dest_path: str


@dataclass(frozen=True)
class DirectoryCreated(ImageEvent):
    path: str
    """A directory appeared (made, or moved in from outside the roots): its contents need a scan."""


@dataclass(frozen=True)
class DirectoryDeleted(ImageEvent):
    path: str
    """A directory is gone (deleted, or moved out of the roots): so is everything below it."""


@dataclass(frozen=True)
class DirectoryMoved(ImageEvent):
    src_path: str
    dest_path: str
    """Everything below ``src_path`` now lives below ``dest_path``."""


@dataclass(frozen=True)
class RescanRequested(ImageEvent):
    path: str
    """Events below this directory may have been lost (the OS queue overflowed): compare it again."""


#: Event classes by name, for the journal (which stores the name and the paths).
EVENT_TYPES: dict[str, type[ImageEvent]] = {
    cls.__name__: cls
    for cls in (
        ImageCreated,
        ImageModified,
        ImageDeleted,
        ImageMoved,
        DirectoryCreated,
        DirectoryDeleted,
        DirectoryMoved,
        RescanRequested,
    )
}


def paths_of(event: ImageEvent) -> tuple[str, ...]:
    """The path(s) an event is about: ``(path,)`` or ``(src_path, dest_path)``."""
    if hasattr(event, "src_path"):
        return (event.src_path, event.dest_path)  # type: ignore[attr-defined]
    return (event.path,)  # type: ignore[attr-defined]


class Outcome(StrEnum):
    """What handling one event did; the ``index`` summary counts these."""

    ADDED = "added"
    UPDATED = "updated"
    MOVED = "moved"
    REMOVED = "removed"
    UNCHANGED = "unchanged"
    FAILED = "failed"
