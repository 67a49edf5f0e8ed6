"""A file was renamed or moved: its vector follows it under the same key; the model does not run.

Order of effects: vector re-upserted with the new path -> catalog row renamed. After a crash in
between, the catalog still names the old path; the next scan sees the old path gone and the new one
with the same content, emits this event again, and the replay writes the same entity again.
"""

from __future__ import annotations

from imgwatch.context import Context
from imgwatch.events import ImageCreated, ImageMoved, Outcome
from imgwatch.handlers import image_changed


def handle(event: ImageMoved, ctx: Context) -> Outcome:
    source = ctx.catalog.get(event.src_path)
    if source is None:
        # Moved from somewhere we never indexed (or already handled): it is simply new here.
        return image_changed.handle(ImageCreated(event.dest_path, source=event.source), ctx)

    overwritten = ctx.catalog.get(event.dest_path)
    if overwritten is not None and overwritten.id != source.id:
        ctx.vectors.delete([overwritten.id])
        ctx.catalog.delete(overwritten.id)

    vector = ctx.vectors.get_vectors([source.id]).get(source.id) if source.has_vector else None
    if vector is None:
        # Nothing to carry over (it had failed, or its vector went missing): process it as new.
        ctx.catalog.move(source.id, event.dest_path)
        ctx.catalog.mark_pending(event.dest_path, 0, 0)
        return image_changed.handle(ImageCreated(event.dest_path, source=event.source), ctx)
    ctx.vectors.upsert([(source.id, event.dest_path, vector)])
    ctx.catalog.move(source.id, event.dest_path)
    return Outcome.MOVED
