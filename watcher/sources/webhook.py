"""Webhook source: the edge where posted JSON becomes typed events (the HTTP side is imgwatch.web.webhook).

Two body formats, told apart by their top-level key:

- generic: ``{"events": [{"type": "created|modified|deleted|moved", "path": "/abs/a.jpg",
  "dest_path": "/abs/b.jpg"}]}`` (``dest_path`` only for moves);
- S3 event notifications as AWS S3 and MinIO send them: ``{"Records": [{"eventName":
  "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "photos"}, "object": {"key": "a%20b.jpg"}}}]}``,
  mapped to local paths through the configured ``bucket -> directory`` mounts.

Like the filesystem source, this only produces events: the daemon's :meth:`submit` journals each
one before the endpoint answers ``202``, so an accepted event survives a crash right after.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imgwatch.errors import ConfigError
from imgwatch.events import (
    DirectoryCreated,
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageMoved,
    Source,
)
from imgwatch.scan import has_image_extension
from imgwatch.sources.payloads import (
    GENERIC_TYPES,
    MAX_EVENTS,
    DeletedEvent,
    GenericBody,
    GenericEvent,
    MovedEvent,
    PayloadError,
    S3Record,
    validate_payload,
)

log = logging.getLogger(__name__)

PATH_MAX_BYTES = 4096
NAME_MAX_BYTES = 255
SIGNATURE_HEADER = "X-Imgwatch-Signature"
__all__ = ["GENERIC_TYPES", "MAX_EVENTS", "SIGNATURE_HEADER", "AllowedPaths", "Parsed", "parse_body"]


class MalformedBodyError(Exception):
    """Not JSON, or not an object (HTTP 400)."""


class InvalidEventError(Exception):
    """JSON, but not a valid event list (HTTP 422); ``errors`` is pydantic's list when it said so."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.errors = errors or []
        super().__init__(message)


class ForbiddenPathError(Exception):
    """A path outside every root and mount, or otherwise unacceptable (HTTP 403)."""


@dataclass(frozen=True)
class Parsed:
    events: list[ImageEvent]
    ignored: list[str]
    """Paths accepted but not acted on because they are not image files."""


@dataclass(frozen=True)
class AllowedPaths:
    """Where events may point: the roots and the S3 mount directories (none: anywhere, for local use)."""

    directories: tuple[str, ...]
    mounts: Mapping[str, str]

    def check(self, raw: object, where: str) -> str:
        """``raw`` as a normalised absolute path, or an exception saying why not."""
        if not isinstance(raw, str) or not raw:
            raise InvalidEventError(f"{where} must be a non-empty string")
        if "\0" in raw:
            raise ForbiddenPathError(f"{where} contains a NUL byte")
        try:
            encoded = os.fsencode(raw)
        except UnicodeEncodeError:
            raise ForbiddenPathError(f"{where} is not a valid file name (lone surrogate)") from None
        if len(encoded) > PATH_MAX_BYTES or any(len(part) > NAME_MAX_BYTES for part in encoded.split(b"/")):
            raise ForbiddenPathError(f"{where} is longer than the filesystem allows")
        if not raw.startswith("/"):
            raise ForbiddenPathError(f"{where} must be an absolute path")
        path = os.path.normpath(raw)
        if not self.directories:
            return path
        real = os.path.realpath(path)
        for directory in self.directories:
            if _inside(path, directory) and _inside(real, os.path.realpath(directory)):
                return path
        raise ForbiddenPathError(f"{where} {path!r} is outside every watched root and S3 mount")


def _inside(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory + "/") or directory == "/"


def parse_body(body: bytes, allowed: AllowedPaths, source: Source = Source.WEBHOOK) -> Parsed:
    """Events from a webhook body: JSON, then the format's pydantic model (:mod:`.payloads`), then
    each path checked against ``allowed``."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedBodyError(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise MalformedBodyError("body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise MalformedBodyError("body must be a JSON object with an 'events' or a 'Records' list")
    if "events" not in payload and "Records" not in payload:
        raise InvalidEventError("body has neither 'events' (generic format) nor 'Records' (S3 notifications)")
    try:
        validated = validate_payload(payload)
    except PayloadError as e:
        raise InvalidEventError(str(e), e.errors) from None
    events: list[ImageEvent] = []
    ignored: list[str] = []
    items: list[GenericEvent] | list[S3Record]
    items = validated.events if isinstance(validated, GenericBody) else validated.Records
    for number, item in enumerate(items):
        if isinstance(item, S3Record):
            produced, skipped = _s3_record(item, number, allowed, source)
        else:
            produced, skipped = _generic(item, number, allowed, source)
        events.extend(produced)
        ignored.extend(skipped)
    return Parsed(events, ignored)


def _generic(
    item: GenericEvent, number: int, allowed: AllowedPaths, source: Source
) -> tuple[list[ImageEvent], list[str]]:
    path = allowed.check(item.path, f"event {number}: path")
    if isinstance(item, MovedEvent):
        dest = allowed.check(item.dest_path, f"event {number}: dest_path")
        return _moved(path, dest, source)
    if "dest_path" in (item.model_extra or {}):
        raise InvalidEventError(f"event {number}: dest_path only belongs to 'moved' events")
    if isinstance(item, DeletedEvent):
        return _deleted(path, source)
    return _changed(path, source)


def _changed(path: str, source: Source) -> tuple[list[ImageEvent], list[str]]:
    if os.path.isdir(path):
        return [DirectoryCreated(path, source=source)], []
    if not has_image_extension(path):
        return [], [path]
    return [ImageCreated(path, source=source, write_closed=True)], []


def _deleted(path: str, source: Source) -> tuple[list[ImageEvent], list[str]]:
    # The path is gone, so its kind cannot be looked up: an image name is a file, anything else a folder.
    if has_image_extension(path):
        return [ImageDeleted(path, source=source)], []
    return [DirectoryDeleted(path, source=source)], []


def _moved(src: str, dest: str, source: Source) -> tuple[list[ImageEvent], list[str]]:
    if os.path.isdir(dest):
        return [DirectoryMoved(src, dest, source=source), DirectoryCreated(dest, source=source)], []
    if has_image_extension(src) and has_image_extension(dest):
        return [ImageMoved(src, dest, source=source)], []
    if has_image_extension(dest):
        return [ImageCreated(dest, source=source, write_closed=True)], []
    if has_image_extension(src):
        return [ImageDeleted(src, source=source)], []
    return [], [dest]


def _s3_record(
    item: S3Record, number: int, allowed: AllowedPaths, source: Source
) -> tuple[list[ImageEvent], list[str]]:
    name = item.eventName
    action = name.removeprefix("s3:").split(":", 1)[0]
    if action not in ("ObjectCreated", "ObjectRemoved"):
        raise InvalidEventError(
            f"record {number}: event {name!r} is not handled; send s3:ObjectCreated:* and s3:ObjectRemoved:*"
        )
    bucket, key = item.s3.bucket.name, item.s3.object.key
    if not bucket or not key:
        raise InvalidEventError(f"record {number}: bucket name and object key must be non-empty strings")
    if bucket not in allowed.mounts:
        raise ForbiddenPathError(f"record {number}: bucket {bucket!r} is not mounted (see s3_mounts)")
    # S3 sends keys URL-encoded, spaces as '+'; keys are bytes, so undecodable ones keep surrogates.
    decoded = urllib.parse.unquote_plus(key, errors="surrogateescape")
    mount = allowed.mounts[bucket].rstrip("/")
    path = allowed.check(mount + "/" + decoded.lstrip("/"), f"record {number}: key")
    if not _inside(path, mount):
        raise ForbiddenPathError(f"record {number}: key {decoded!r} leaves the bucket's directory")
    if action == "ObjectRemoved":
        return ([ImageDeleted(path, source=source)], []) if has_image_extension(path) else ([], [path])
    return _changed(path, source)


# ---- addresses ---------------------------------------------------------------------------------


def parse_bind(text: str, option: str = "--webhook") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(option, f"expected HOST:PORT (e.g. 127.0.0.1:8765), not {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_paths(roots: Iterable[str], mounts: Mapping[str, str]) -> AllowedPaths:
    return AllowedPaths(tuple(roots) + tuple(mounts.values()), dict(mounts))
