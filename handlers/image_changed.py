"""A file appeared or changed: make its vector current, running the model only when nothing else can.

Order of effects: catalog row ``pending`` -> vector upserted under the row id -> row ``indexed``.
A crash in between leaves a pending row whose redo upserts the same id again: no duplicate.

Copies of one content handled at the same time share one extraction (``ctx.extractions``): the
first computes, the others wait for its vector (or its failure) and store it under their own row.
"""

from __future__ import annotations

from imgwatch.context import Context
from imgwatch.errors import ImageError
from imgwatch.events import ImageCreated, ImageModified, Outcome
from imgwatch.services.abc import FileBlob, FileRecord, FileState, Vector


def handle(event: ImageCreated | ImageModified, ctx: Context) -> Outcome:
    path = event.path
    existing = ctx.catalog.get(path)
    stat = ctx.files.stat(path)
    if existing is not None and stat is not None and existing.is_current(stat, ctx.signature_key):
        return Outcome.UNCHANGED

    size, mtime_ns = stat or (0, 0)
    record = ctx.catalog.mark_pending(path, size, mtime_ns)
    try:
        blob = ctx.files.read(path)
    except ImageError as e:
        return _fail(ctx, record, size, mtime_ns, None, e.reason)

    if (
        existing is not None
        and existing.content_hash == blob.content_hash
        and existing.has_current_vector(ctx.signature_key)
    ):
        # Touched, not changed (same bytes): keep the vector, remember the new mtime.
        ctx.catalog.touch(record.id, blob.size, blob.mtime_ns)
        return Outcome.UNCHANGED

    try:
        # The key stays held until the first copy's vector is stored: a copy that comes later
        # finds that vector as its twin, one that comes earlier waits for it. The extractor itself,
        # not its signature: a new index's signature settles only when the model has loaded.
        key = (ctx.extractor, blob.content_hash)
        with ctx.extractions.shared(key, lambda: _vector(blob, ctx)) as vector:
            _store(ctx, record, blob, vector)
    except ImageError as e:
        # The shared run failed: every copy fails with its reason, and none stays pending.
        return _fail(ctx, record, blob.size, blob.mtime_ns, blob.content_hash, e.reason)
    was_indexed = existing is not None and existing.state is FileState.INDEXED
    return Outcome.UPDATED if was_indexed else Outcome.ADDED


def _vector(blob: FileBlob, ctx: Context) -> Vector:
    """A twin's vector if one is stored, else the model's."""
    vector = _vector_of_twin(blob, ctx)
    return vector if vector is not None else ctx.extractor.embed(blob.data)


def _vector_of_twin(blob: FileBlob, ctx: Context) -> Vector | None:
    """The stored vector of another file with the same bytes, made by the current extractor."""
    twin = ctx.catalog.find_by_hash(blob.content_hash, exclude_path=blob.path, signature=ctx.signature_key)
    if twin is None:
        return None
    return ctx.vectors.get_vectors([twin.id]).get(twin.id)


def _store(ctx: Context, record: FileRecord, blob: FileBlob, vector: Vector) -> None:
    ctx.vectors.upsert([(record.id, blob.path, vector)])
    ctx.catalog.mark_indexed(record.id, blob, ctx.signature_key)


def _fail(
    ctx: Context, record: FileRecord, size: int, mtime_ns: int, content_hash: str | None, reason: str
) -> Outcome:
    # A vector of the file's previous content would answer searches for content that is gone. The
    # row first: a crash in between leaves a stray entity (never reported) rather than a row that
    # claims a vector it no longer has.
    ctx.catalog.mark_failed(record.id, size, mtime_ns, content_hash, reason)
    ctx.vectors.delete([record.id])
    return Outcome.FAILED
