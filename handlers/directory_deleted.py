"""A directory is gone (deleted, or moved out of the roots): remove every file below it.

Vectors first, rows second, in batches: a crash in between leaves rows whose vectors are gone,
which a replay (or the next scan) deletes again.
"""

from __future__ import annotations

from collections.abc import Sequence

from imgwatch.context import Context
from imgwatch.events import DirectoryDeleted, Outcome

BATCH = 500


def handle(event: DirectoryDeleted, ctx: Context) -> Outcome:
    # Files that exist (again) are kept: the event may be older than what is on disk now. So are
    # files that cannot be stat'ed now (permissions, I/O errors): they are not known to be gone.
    ids = [record.id for record in ctx.catalog.under(event.path) if ctx.files.gone(record.path)]
    if not ids:
        return Outcome.UNCHANGED
    remove(ids, ctx)
    return Outcome.REMOVED


def remove(ids: Sequence[int], ctx: Context) -> None:
    """Remove these files from the index: their vectors, then their rows, a batch at a time.

    Also used by ``imgwatch forget ROOT`` (:func:`imgwatch.roots.forget_root`), which removes the
    files below a root whether or not they still exist."""
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        ctx.vectors.delete(batch)
        ctx.catalog.delete_many(batch)
