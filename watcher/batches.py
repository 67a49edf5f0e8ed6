"""Copies, moves and deletions applied many at a time: per chunk of up to :data:`BATCH` files, one
catalog read, one vector read, one Milvus upsert (or delete) and one catalog transaction, where the
handlers make one of each per file.

Only the cases that need no model and no judgement are taken here; everything else (a move from a
path never indexed, a changed file, new content, a read error, a chunk whose store write failed) is
handed back in :attr:`Applied.left` for its handler, one event at a time.

A chunk keeps the order of effects of the handlers it stands for, so a crash (kill -9) at any point
leaves what a crash of those handlers would, for each of its files:

- copy: rows ``pending`` (one transaction) -> vectors upserted under the row ids -> rows ``indexed``
  (one transaction). A crash in between leaves pending rows, which the next run redoes under the
  same ids: nothing doubled, and no row says indexed before its vector is stored.
- move: vectors re-upserted under their keys with the new paths -> rows renamed. A crash in between
  leaves rows under their old paths; the replay (or the next scan) writes the same entities again.
- deletion: vectors deleted -> rows deleted. A crash in between leaves rows that the replay (or the
  next scan, which sees the files gone) deletes again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, cast

from imgwatch.context import Context
from imgwatch.errors import ImageError
from imgwatch.events import (
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageModified,
    ImageMoved,
    Outcome,
    paths_of,
)
from imgwatch.services.abc import FileBlob, FileRecord

log = logging.getLogger(__name__)

#: Files per chunk: one Milvus call of 256 4096-d vectors is 4 MiB, well inside a server's limits.
BATCH = 256
#: The events a chunk can take (the others always go to their handlers).
BATCHED = (ImageCreated, ImageModified, ImageMoved, ImageDeleted)


class BatchCatalog(Protocol):
    """What chunks use of the catalog beyond :class:`imgwatch.services.abc.Catalog` (the real one,
    ``SQLiteCatalog``, has them; the protocol does not declare them yet)."""

    def get_by_paths(self, paths: Iterable[str]) -> dict[str, FileRecord]: ...

    def mark_pending_many(self, files: Sequence[tuple[str, int, int]]) -> dict[str, FileRecord]: ...

    def mark_indexed_many(self, done: Sequence[tuple[int, FileBlob]], signature: str) -> None: ...

    def twins_by_hash(self, hashes: Iterable[str], signature: str) -> dict[str, FileRecord]: ...

    def sizes_with_vectors(self, sizes: Iterable[int], signature: str) -> set[int]: ...

    def move_many(self, moves: Iterable[tuple[int, str]]) -> None: ...

    def delete_many(self, record_ids: Iterable[int]) -> None: ...


class BatchVectors(Protocol):
    """What chunks use of the vector store beyond :class:`imgwatch.services.abc.VectorStore` (the real
    one, ``MilvusVectorStore``, has them)."""

    def present(self, ids: Iterable[int]) -> set[int]: ...

    def movable(self, ids: Iterable[int]) -> set[int]: ...

    def rename(self, items: Sequence[tuple[int, str]]) -> None: ...


@dataclass
class Applied:
    done: list[tuple[ImageEvent, Outcome]] = field(default_factory=list)
    """Events applied, with what applying them did."""
    left: list[ImageEvent] = field(default_factory=list)
    """Events for their handlers, one at a time."""


def chunks(events: Iterable[ImageEvent], size: int = BATCH) -> Iterator[list[ImageEvent]]:
    """``events`` in order, in runs of at most ``size`` that touch no path twice (a later event on a
    path must see what the earlier one did)."""
    chunk: list[ImageEvent] = []
    seen: set[str] = set()
    for event in events:
        paths = paths_of(event)
        if len(chunk) >= size or seen.intersection(paths):
            yield chunk
            chunk, seen = [], set()
        chunk.append(event)
        seen.update(paths)
    if chunk:
        yield chunk


def apply(events: Sequence[ImageEvent], ctx: Context) -> Applied:
    """Apply one chunk (at most :data:`BATCH` events, no path twice: see :func:`chunks`), holding its
    paths meanwhile. Never raises for a store's failure: that group goes to :attr:`Applied.left`, whose
    handlers then fail (and are retried) one by one as they would have without batching."""
    applied = Applied()
    groups: dict[type, list[ImageEvent]] = {ImageMoved: [], ImageDeleted: [], ImageCreated: []}
    for event in events:
        kind = ImageCreated if isinstance(event, ImageModified) else type(event)
        if kind in groups:
            groups[kind].append(event)
        else:
            applied.left.append(event)
    with ctx.paths.hold(path for event in events for path in paths_of(event)):
        for kind, run in ((ImageMoved, _moves), (ImageDeleted, _deletions), (ImageCreated, _copies)):
            group = groups[kind]
            if not group:
                continue
            try:
                done, left = run(group, ctx)
            except Exception:
                log.exception(
                    "applying %d %s event(s) together failed; handling them one by one",
                    len(group),
                    kind.__name__,
                )
                done, left = [], group
            applied.done += done
            applied.left += left
    return applied


Result = tuple[list[tuple[ImageEvent, Outcome]], list[ImageEvent]]


def batch_vectors(ctx: Context) -> BatchVectors:
    """``ctx.vectors`` as a :class:`BatchVectors` (which the real one is)."""
    return cast("BatchVectors", ctx.vectors)


def batch_catalog(ctx: Context) -> BatchCatalog:
    """``ctx.catalog`` as a :class:`BatchCatalog` (which the real one is)."""
    return cast("BatchCatalog", ctx.catalog)


def _moves(group: list[ImageEvent], ctx: Context) -> Result:
    moves = cast("list[ImageMoved]", group)
    catalog, vectors = batch_catalog(ctx), batch_vectors(ctx)
    sources = catalog.get_by_paths(m.src_path for m in moves)
    stored = vectors.movable(r.id for r in sources.values() if r.has_vector)
    # Moved from a path never indexed, or with no vector to carry: image_moved decides (as new).
    carried = [(m, r) for m in moves if (r := sources.get(m.src_path)) is not None and r.id in stored]
    moved_ids = {r.id for _, r in carried}
    left: list[ImageEvent] = [
        m for m in moves if (r := sources.get(m.src_path)) is None or r.id not in stored
    ]
    if not carried:
        return [], left
    # Something already indexed at a new path (a file the move replaced): the moved file wins, as on disk.
    targets = catalog.get_by_paths(m.dest_path for m, _ in carried)
    overwritten = [r.id for r in targets.values() if r.id not in moved_ids]
    if overwritten:
        ctx.vectors.delete(overwritten)
        catalog.delete_many(overwritten)
    vectors.rename([(r.id, m.dest_path) for m, r in carried])
    catalog.move_many((r.id, m.dest_path) for m, r in carried)
    return [(m, Outcome.MOVED) for m, _ in carried], left


def _deletions(group: list[ImageEvent], ctx: Context) -> Result:
    deletions = cast("list[ImageDeleted]", group)
    catalog = batch_catalog(ctx)
    records = catalog.get_by_paths(d.path for d in deletions)
    # There again (written anew before this was handled), or not stat-able now: not known to be gone.
    gone = {d.path for d in deletions if d.path in records and ctx.files.gone(d.path)}
    ids = [records[path].id for path in gone]
    if ids:
        ctx.vectors.delete(ids)
        catalog.delete_many(ids)
    return [(d, Outcome.REMOVED if d.path in gone else Outcome.UNCHANGED) for d in deletions], []


def _copies(group: list[ImageEvent], ctx: Context) -> Result:
    """New files whose bytes an indexed file has: its vector, stored under their own new rows."""
    changes = cast("list[ImageCreated | ImageModified]", group)
    catalog, signature = batch_catalog(ctx), ctx.signature_key
    known = catalog.get_by_paths(c.path for c in changes)
    left: list[ImageEvent] = []
    fresh: list[tuple[ImageCreated | ImageModified, tuple[int, int]]] = []
    for change in changes:
        # A row already there (changed, touched, pending after a crash): image_changed decides.
        stat = None if change.path in known else ctx.files.stat(change.path)
        if stat is None:
            left.append(change)
        else:
            fresh.append((change, stat))
    # Only a file whose size an indexed file has can be a copy: the others are not even read here.
    sizes = catalog.sizes_with_vectors({stat[0] for _, stat in fresh}, signature) if fresh else set()
    blobs: list[tuple[ImageEvent, FileBlob]] = []
    for change, stat in fresh:
        try:
            blob = ctx.files.read(change.path) if stat[0] in sizes else None
        except ImageError:
            blob = None  # image_changed reads it again and records why it failed
        if blob is None:
            left.append(change)
        else:
            blobs.append((change, replace(blob, data=b"")))  # the hash is all a copy needs
    twins = catalog.twins_by_hash((b.content_hash for _, b in blobs), signature) if blobs else {}
    vectors = ctx.vectors.get_vectors({twins[b.content_hash].id for _, b in blobs if b.content_hash in twins})
    copies = [
        (c, b, twin.id)
        for c, b in blobs
        if (twin := twins.get(b.content_hash)) is not None and twin.id in vectors
    ]
    left += [c for c, b in blobs if b.content_hash not in twins or twins[b.content_hash].id not in vectors]
    if not copies:
        return [], left
    rows = catalog.mark_pending_many([(b.path, b.size, b.mtime_ns) for _, b, _ in copies])
    ctx.vectors.upsert([(rows[b.path].id, b.path, vectors[twin]) for _, b, twin in copies])
    catalog.mark_indexed_many([(rows[b.path].id, b) for _, b, _ in copies], signature)
    return [(c, Outcome.ADDED) for c, _, _ in copies], left
