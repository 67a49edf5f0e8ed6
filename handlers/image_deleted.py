"""A file is gone: remove its vector, then its catalog row (a crash in between is redone safely)."""

from __future__ import annotations

from imgwatch.context import Context
from imgwatch.events import ImageDeleted, Outcome


def handle(event: ImageDeleted, ctx: Context) -> Outcome:
    record = ctx.catalog.get(event.path)
    if record is None:
        return Outcome.UNCHANGED
    if not ctx.files.gone(event.path):
        # There again (deleted, then written anew, before this event was handled): not a deletion.
        # Or it cannot be stat'ed now (permissions, an I/O error): not known to be gone either.
        return Outcome.UNCHANGED
    ctx.vectors.delete([record.id])
    ctx.catalog.delete(record.id)
    return Outcome.REMOVED
