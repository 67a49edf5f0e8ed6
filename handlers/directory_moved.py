"""A directory was renamed or moved within the roots: every file below it keeps its vector.

For each batch: entities given their new paths (vectors kept), then the rows renamed. After a crash in
between, the rows still carry the old paths, and a replay of this event writes the same entities.
Files below the new location that the catalog never knew are left to the scan that follows.
"""

from __future__ import annotations

import os

from imgwatch.batches import batch_catalog, batch_vectors
from imgwatch.context import Context
from imgwatch.events import DirectoryMoved, Outcome

BATCH = 256


def handle(event: DirectoryMoved, ctx: Context) -> Outcome:
    src = event.src_path.rstrip(os.sep)
    dest = event.dest_path.rstrip(os.sep)
    records = list(ctx.catalog.under(src))
    if not records:
        return Outcome.UNCHANGED
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        renamed = {r.id: dest + r.path[len(src) :] for r in batch}
        # Something already indexed at a new path (a scan got there first, or a file that the move
        # replaced): the moved file wins, as it would on disk.
        targets = batch_catalog(ctx).get_by_paths(renamed.values())
        overwritten = [r.id for r in targets.values() if r.id not in renamed]
        if overwritten:
            ctx.vectors.delete(overwritten)
            ctx.catalog.delete_many(overwritten)
        stored = batch_vectors(ctx).present(r.id for r in batch if r.has_vector)
        batch_vectors(ctx).rename([(key, renamed[key]) for key in sorted(stored)])
        ctx.catalog.move_many(renamed.items())
    return Outcome.MOVED
