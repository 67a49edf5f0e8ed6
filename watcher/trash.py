"""Discarding indexed files: each to the user's trash, logged, and dropped from the index at once.

The trash is the freedesktop.org one (``$XDG_DATA_HOME/Trash/files`` with a ``Trash/info/*.trashinfo``
naming the original path; on another filesystem its ``.Trash/$UID`` or ``.Trash-$UID``), written by
send2trash's own implementation of the spec. Nothing here ever unlinks a file: what goes can be
restored from the trash (any file manager, or by hand from the log's ``trashed_to``).

The log is JSON lines, one per file moved, appended and flushed before the index forgets the file:
``{"time", "path", "trashed_to", ...reason}``. Callers (the ``dedupe`` command, the daemon's
``POST /discard``, the search page's "keep this one") pass what the file duplicated as ``reason``.

A file is only moved while it is exactly as the catalog knows it (same size and mtime): one that
changed since it was indexed may no longer be the duplicate it was judged to be.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from imgwatch.context import Context
from imgwatch.events import ImageDeleted
from imgwatch.runtime import handle

log = logging.getLogger(__name__)

_INFO_SUFFIX = b".trashinfo"


@dataclass(frozen=True)
class Discarded:
    """What became of one file :func:`discard` was given."""

    path: str
    trashed_to: str | None
    """The file's path in the trash; None when it was not moved."""
    error: str | None
    """Why it was not moved; None when it was."""

    @property
    def moved(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Discarded:
        return cls(raw["path"], raw.get("trashed_to"), raw.get("error"))


def discard(
    paths: Sequence[str], ctx: Context, log_path: Path, reason: Mapping[str, Any] | None = None
) -> list[Discarded]:
    """Each file to the user's trash, logged, and dropped from the index at once.

    One result per distinct path, in order. A file that is not indexed, changed since it was
    indexed, vanished, or cannot be moved (permissions, a filesystem without a usable trash) stays
    where it is, with the reason in its result; the others go on. Each file is held (``ctx.paths``)
    from its check to its removal from the index, so no handler re-indexes it halfway.

    Raises ``OSError`` before moving anything when the log cannot be opened: a move that is not
    logged could not be undone from the log.
    """
    with _open_log(log_path) as log_file:
        return [_discard_one(path, ctx, log_file, reason or {}) for path in dict.fromkeys(paths)]


def discard_keeping(
    paths: Sequence[str],
    kept: Sequence[str],
    ctx: Context,
    log_path: Path,
    reason: Mapping[str, Any] | None = None,
) -> list[Discarded]:
    """:func:`discard` ``paths`` only while every file of ``kept`` is still there as indexed.

    For a group of duplicates: the copies go only if the one they duplicate stays. A kept file that
    vanished or changed leaves every path where it is (each result says why); a path that is also in
    ``kept`` is never moved.
    """
    kept_set = set(kept)
    for keeper in kept:
        problem = _not_as_indexed(keeper, ctx)
        if problem is not None:
            why = f"kept: the file kept instead, {keeper}, {problem}"
            return [Discarded(p, None, why) for p in dict.fromkeys(paths)]
    refused = [Discarded(p, None, "kept: it is the file to keep") for p in paths if p in kept_set]
    moved = discard([p for p in paths if p not in kept_set], ctx, log_path, reason)
    return refused + moved


def _open_log(log_path: Path) -> IO[str]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return log_path.open("a", encoding="utf-8", errors="surrogateescape")


def _discard_one(path: str, ctx: Context, log_file: IO[str], reason: Mapping[str, Any]) -> Discarded:
    with ctx.paths.hold([path]):
        problem = _not_as_indexed(path, ctx)
        if problem is not None:
            return Discarded(path, None, problem)
        try:
            trashed_to = _to_trash(path)
        except OSError as e:
            return Discarded(path, None, f"cannot be moved to the trash: {_describe(e)}")
        line = {"time": datetime.now(UTC).isoformat(), "path": path, "trashed_to": trashed_to, **reason}
        log_file.write(json.dumps(line, ensure_ascii=False) + "\n")
        log_file.flush()
        os.fsync(log_file.fileno())
        try:
            # The normal handler path: it takes the same path lock (re-entrant) and removes the
            # vector, then the row, as a watched deletion would.
            handle(ImageDeleted(path), ctx)
        except Exception:
            # The file is in the trash and logged; the watcher, the next `index` or reconcile drop
            # it from the index (it is gone from its folder).
            log.warning("%s is in the trash, but the index still lists it", path, exc_info=True)
        return Discarded(path, trashed_to, None)


def _not_as_indexed(path: str, ctx: Context) -> str | None:
    """Why ``path`` is not the file the catalog knows (None when it is)."""
    record = ctx.catalog.get(path)
    if record is None:
        return "skipped: not in the index"
    stat = ctx.files.stat(path)
    if stat is None:
        return "skipped: vanished" if ctx.files.gone(path) else "skipped: cannot be read"
    if stat != (record.size, record.mtime_ns):
        return "skipped: changed since it was indexed (size or modification time)"
    return None


def _describe(error: OSError) -> str:
    if error.strerror is None:
        return str(error)
    return f"{error.strerror}: {os.fsdecode(error.filename)}" if error.filename else error.strerror


def _to_trash(path: str) -> str:
    """Move ``path`` to its trash (send2trash's freedesktop.org implementation) and return where it
    went. send2trash does not say: the name it picks is predicted first (its rule: the file's name,
    else ``NAME N.EXT`` for the first N free in both ``files/`` and ``info/``), then confirmed by the
    new ``.trashinfo``."""
    # The spec's implementation itself, not send2trash's top-level choice: with PyGObject installed
    # that would be GIO, whose trash names are not reported back either and cannot be predicted.
    from send2trash import plat_other

    path_b = os.fsencode(path)
    candidates = _trash_candidates(plat_other, path_b)
    predicted = {trash: _free_name(trash, os.path.basename(path_b)) for trash, _ in candidates}
    plat_other.send2trash(path_b)
    for trash, topdir in candidates:
        name = predicted[trash]
        if _info_names(os.path.join(trash, b"info", name + _INFO_SUFFIX), topdir) == os.path.abspath(path_b):
            return os.fsdecode(os.path.join(trash, b"files", name))
    for trash, topdir in candidates:
        found = _search_info(trash, topdir, os.path.abspath(path_b))
        if found is not None:
            return os.fsdecode(found)
    log.warning("%s went to the trash, but where could not be told", path)
    return os.fsdecode(os.path.join(candidates[0][0], b"files"))


def _trash_candidates(plat_other: Any, path_b: bytes) -> list[tuple[bytes, bytes]]:
    """``(trash dir, the dir its .trashinfo paths are relative to)`` where send2trash may put the
    file: the home trash, then those of the file's own filesystem."""
    home: tuple[bytes, bytes] = (plat_other.HOMETRASH_B, plat_other.XDG_DATA_HOME)
    try:
        mount = plat_other.find_mount_point(path_b)
    except OSError:
        return [home]
    uid = str(os.getuid()).encode()
    return [
        home,
        (os.path.join(mount, b".Trash", uid), mount),
        (os.path.join(mount, b".Trash-" + uid), mount),
    ]


def _free_name(trash: bytes, name: bytes) -> bytes:
    base, ext = os.path.splitext(name)
    counter, candidate = 0, name
    while os.path.lexists(os.path.join(trash, b"files", candidate)) or os.path.lexists(
        os.path.join(trash, b"info", candidate + _INFO_SUFFIX)
    ):
        counter += 1
        candidate = base + b" " + str(counter).encode() + ext
    return candidate


def _info_names(info: bytes, topdir: bytes) -> bytes | None:
    """The original path a ``.trashinfo`` file records (absolute), or None."""
    try:
        with open(info, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(b"Path="):
            recorded = unquote(line[5:].decode("ascii", "replace"), errors="surrogateescape")
            return os.path.abspath(os.path.join(topdir, os.fsencode(recorded)))
    return None


def _search_info(trash: bytes, topdir: bytes, original: bytes) -> bytes | None:
    """The newest entry of ``trash`` whose ``.trashinfo`` names ``original`` (a slow fallback)."""
    info_dir = os.path.join(trash, b"info")
    try:
        entries = list(os.scandir(info_dir))
    except OSError:
        return None
    matches = [
        (e.stat().st_mtime_ns, e.name[: -len(_INFO_SUFFIX)])
        for e in entries
        if e.name.endswith(_INFO_SUFFIX) and _info_names(e.path, topdir) == original
    ]
    if not matches:
        return None
    return os.path.join(trash, b"files", max(matches)[1])
