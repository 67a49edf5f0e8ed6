"""Event handlers: plain functions ``handle(event, ctx) -> Outcome``, one module per kind of change.

Each is idempotent: handling the same event twice leaves the catalog and the vector store as handling
it once did. Each writes the catalog before and after touching the vector store in an order that a
crash at any point leaves either the old state or a ``pending`` row that the next run finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from imgwatch.context import Context
from imgwatch.events import (
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageModified,
    ImageMoved,
    Outcome,
)
from imgwatch.handlers import directory_deleted, directory_moved, image_changed, image_deleted, image_moved

Handler = Callable[[Any, Context], Outcome]

#: Which handler takes which event type (exact types, as APScheduler's ``subscribe`` does).
#: ``DirectoryCreated`` has no handler: the runtime turns it into a scan of the new directory.
HANDLERS: Mapping[type[ImageEvent], Handler] = {
    ImageCreated: image_changed.handle,
    ImageModified: image_changed.handle,
    ImageDeleted: image_deleted.handle,
    ImageMoved: image_moved.handle,
    DirectoryDeleted: directory_deleted.handle,
    DirectoryMoved: directory_moved.handle,
}
