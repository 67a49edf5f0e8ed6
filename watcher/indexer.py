"""``imgwatch index``: compare roots on disk with the catalog, turn differences into events, handle them.

This is an event source (like the daemon's watchers): it only decides *what happened*
(created / modified / deleted / moved) and leaves *what to do* to the same handlers the daemon uses.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from imgwatch import batches
from imgwatch.context import Context
from imgwatch.errors import ImageError, ImgwatchError
from imgwatch.events import ImageCreated, ImageDeleted, ImageEvent, ImageModified, ImageMoved, Outcome
from imgwatch.runtime import dispatch, dispatch_all
from imgwatch.scan import ScanResult, ScanRules, scan
from imgwatch.services.abc import FileRecord
from imgwatch.services.lazy_extractor import ModelUnavailableError, load_failure

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of each file that failed in this run."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of directories that could not be listed and files that could not be
    stat'ed: their entries (and those below them) were left as they were."""
    seconds: float = 0.0
    """Time spent applying the plan (reading, decoding, the model, both stores), start-up excluded."""
    model_runs: int = 0
    """Images the model ran on meanwhile (copies of one content in flight together count once; in a
    daemon, searches and other work running at the same time count too)."""

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)

    def as_dict(self) -> dict[str, object]:
        counts: dict[str, object] = {o.value: getattr(self, o.value) for o in Outcome}
        counts["failures"] = [{"path": path, "error": reason} for path, reason in self.failures]
        counts["skipped"] = [{"path": path, "error": reason} for path, reason in self.skipped]
        counts["seconds"] = round(self.seconds, 3)
        counts["model_runs"] = self.model_runs
        return counts


@dataclass(frozen=True)
class Plan:
    moves: list[ImageMoved]
    deletions: list[ImageDeleted]
    changes: list[ImageEvent]
    unchanged: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)``: what could not be looked at; nothing at or below it is deleted."""

    @property
    def total(self) -> int:
        return len(self.moves) + len(self.deletions) + len(self.changes) + self.unchanged


def normalise_root(root: str) -> str:
    """Absolute, without ``..`` or a trailing slash; symlinks are kept (paths are indexed as seen)."""
    absolute = os.path.abspath(os.fsdecode(root))
    if not os.path.isdir(absolute):
        reason = "does not exist" if not os.path.lexists(absolute) else "is not a directory"
        raise ImgwatchError(f"cannot index {absolute!r}: it {reason}")
    return absolute


def plan(roots: Sequence[str], rules: ScanRules, ctx: Context) -> Plan:
    """What changed under ``roots`` since the catalog last saw them."""
    # The catalog before the disk: a file that a concurrent handler indexes while we walk is then
    # at worst "new" (handled again, a no-op), never "vanished" (which would delete it).
    known: dict[str, FileRecord] = {}
    for root in roots:
        known.update((record.path, record) for record in ctx.catalog.under(root))
    scans: list[ScanResult] = []
    for root in roots:
        try:
            scans.append(scan(root, rules))
        except OSError as e:
            raise ImgwatchError(f"cannot read root {root!r}: {e.strerror or e}") from e
    present: dict[str, tuple[int, int] | None] = {}
    for result in scans:
        present.update(result.files)
        present.update(dict.fromkeys(result.broken))
    # Never below a directory that could not be listed, nor at (or below: it may be a directory) a
    # path that could not be stat'ed: "cannot look" is not "gone".
    unreadable = {path for result in scans for path in result.unreadable}
    blind_spots = tuple(path + os.sep for path in unreadable)

    unchanged = 0
    new: list[str] = []
    changes: list[ImageEvent] = []
    signature = ctx.signature_key  # once: it is a hash of the signature's fields
    for path, stat in present.items():
        record = known.get(path)
        if record is None:
            new.append(path)
        elif stat is not None and record.is_current(stat, signature):
            unchanged += 1
        else:
            changes.append(ImageModified(path))
    vanished = [
        r
        for p, r in known.items()
        if p not in present and p not in unreadable and not p.startswith(blind_spots)
    ]
    moves, new, vanished = _pair_moves(new, vanished, present, ctx)
    changes.extend(ImageCreated(path) for path in new)
    deletions = [ImageDeleted(record.path) for record in vanished]
    skipped = [item for result in scans for item in result.skipped]
    return Plan(moves=moves, deletions=deletions, changes=changes, unchanged=unchanged, skipped=skipped)


def _pair_moves(
    new: list[str], vanished: list[FileRecord], present: dict[str, tuple[int, int] | None], ctx: Context
) -> tuple[list[ImageMoved], list[str], list[FileRecord]]:
    """Match new paths with vanished records of the same content: those are renames, not add+remove.

    Only new files whose size equals a vanished file's are read (and hashed) here.
    """
    gone = _Vanished(record for record in vanished if record.content_hash and record.has_vector)
    if not gone:
        return [], new, vanished
    moves: list[ImageMoved] = []
    moved_from: set[int] = set()
    still_new: list[str] = []
    for path in new:
        stat = present[path]
        match = None
        if stat and gone.has_size(stat[0]):
            try:
                digest = ctx.files.read(path).content_hash
            except ImageError:
                digest = None
            if digest is not None:
                match = gone.take(stat[0], digest, stat[1], os.path.basename(path))
        if match is None:
            still_new.append(path)
        else:
            moved_from.add(match.id)
            moves.append(ImageMoved(match.path, path))
    return moves, still_new, [r for r in vanished if r.id not in moved_from]


class _Vanished:
    """Vanished records by size and content, each taken at most once, looked up in constant time: a
    library of many copies moves thousands of files with the same bytes in one run, and comparing
    each with every vanished copy grew with the square of the move (50,000 files: minutes).

    Among identical copies :meth:`take` prefers the one this file was renamed from: a rename keeps the
    mtime and usually the name (the mtime first). Another copy's row would carry that copy's mtime, so
    the file would look changed to every later scan. Ties go to the first in scan order."""

    def __init__(self, records: Iterable[FileRecord]) -> None:
        self._left: dict[int, int] = defaultdict(int)  # records not yet taken, by size
        self._by: dict[tuple[object, ...], deque[FileRecord]] = defaultdict(deque)
        self._taken: set[int] = set()
        for r in records:
            self._left[r.size] += 1
            name = os.path.basename(r.path)
            for key in _keys(r.size, r.content_hash or "", r.mtime_ns, name):
                self._by[key].append(r)

    def __bool__(self) -> bool:
        return bool(self._left)

    def has_size(self, size: int) -> bool:
        return self._left.get(size, 0) > 0

    def take(self, size: int, digest: str, mtime_ns: int, name: str) -> FileRecord | None:
        for key in _keys(size, digest, mtime_ns, name):
            queue = self._by.get(key)
            while queue and queue[0].id in self._taken:
                queue.popleft()  # taken through another key
            if queue:
                record = queue.popleft()
                self._taken.add(record.id)
                self._left[size] -= 1
                return record
        return None


def _keys(size: int, digest: str, mtime_ns: int, name: str) -> tuple[tuple[object, ...], ...]:
    """Lookup keys from the best match to the weakest: same mtime and name, same mtime, same name, any."""
    return (
        (size, digest, mtime_ns, name),
        (size, digest, mtime_ns, None),
        (size, digest, None, name),
        (size, digest, None, None),
    )


runtime_log = logging.getLogger("imgwatch.runtime")


class _RepeatedLoadFailures(logging.Filter):
    """Drops :func:`dispatch`'s traceback of a file whose handler failed only because the model could
    not be loaded: :func:`run_plan` raises that error itself, once, instead of one per file reached."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ModelUnavailableError))


def _one_per_size(events: Sequence[ImageEvent], ctx: Context) -> tuple[list[ImageEvent], list[ImageEvent]]:
    """``events`` split into one new file of each size (with every event a chunk never takes: files
    the catalog already has, other kinds, files that cannot be stat-ed), and the rest."""
    changes = [e.path for e in events if isinstance(e, ImageCreated | ImageModified)]
    known = batches.batch_catalog(ctx).get_by_paths(changes) if changes else {}
    firsts: list[ImageEvent] = []
    rest: list[ImageEvent] = []
    sizes: set[int] = set()
    for event in events:
        path = event.path if isinstance(event, ImageCreated | ImageModified) else None
        stat = ctx.files.stat(path) if path is not None and path not in known else None
        if stat is None or stat[0] not in sizes:
            firsts.append(event)
            if stat is not None:
                sizes.add(stat[0])
        else:
            rest.append(event)
    return firsts, rest


def run_plan(
    work: Plan,
    ctx: Context,
    *,
    workers: int,
    on_handled: Callable[[ImageEvent, Outcome], None] | None = None,
) -> IndexSummary:
    """Handle the planned events: moves and deletions first (cheap, and they free paths), then copies
    of indexed content, all in chunks (:mod:`imgwatch.batches`), then the rest concurrently so that
    decoding overlaps the model: one file of each size, the copies of what that indexed in chunks, and
    what is still left.

    A model that cannot be loaded when the first image needs it stops the run with its error
    (:class:`~imgwatch.services.lazy_extractor.ModelUnavailableError`), as it stopped a run that
    loaded it at start: the files it reached stay pending, the others as they were."""
    started = time.monotonic()
    runs_before = ctx.extractor.images_embedded
    summary = IndexSummary(unchanged=work.unchanged, skipped=list(work.skipped))

    def record(event: ImageEvent, outcome: Outcome) -> None:
        if outcome is Outcome.FAILED and (error := load_failure(ctx.extractor)) is not None:
            raise error  # dispatch_all lets the running handlers end and starts no more
        summary.count(outcome)
        if outcome is Outcome.FAILED:
            path = event.dest_path if isinstance(event, ImageMoved) else getattr(event, "path", "")
            row = ctx.catalog.get(path)
            summary.failures.append((path, (row.error if row else None) or "unexpected error (see log)"))
        if on_handled is not None:
            on_handled(event, outcome)

    def apply_in_chunks(events: Sequence[ImageEvent]) -> list[ImageEvent]:
        """Apply ``events`` a chunk at a time; the events left for their handlers."""
        left: list[ImageEvent] = []
        for chunk in batches.chunks(events):
            applied = batches.apply(chunk, ctx)
            for event, outcome in applied.done:
                record(event, outcome)
            left += applied.left
        return left

    def handle(events: Sequence[ImageEvent]) -> None:
        quiet = _RepeatedLoadFailures()
        runtime_log.addFilter(quiet)
        try:
            dispatch_all(events, ctx, workers=workers, on_handled=record)
        finally:
            runtime_log.removeFilter(quiet)

    for event in apply_in_chunks([*work.moves, *work.deletions]):
        record(event, dispatch(event, ctx))
    # Copies of indexed content a chunk at a time. Of what is left (new content, changed files), one
    # file of each size first, concurrently so that decoding overlaps the model: a copy always has its
    # original's size, so then the copies among the rest have a vector to be applied with, a chunk at a
    # time, instead of one handler each (a first index of 100,000 files of 200 contents spent 1,230 s
    # of its 1,781 in handlers storing copies one by one). The rest last, concurrently again.
    left = apply_in_chunks(work.changes)
    firsts, rest = _one_per_size(left, ctx)
    handle(firsts)
    handle(apply_in_chunks(rest) if firsts and rest else rest)
    summary.seconds = time.monotonic() - started
    summary.model_runs = ctx.extractor.images_embedded - runs_before
    return summary
