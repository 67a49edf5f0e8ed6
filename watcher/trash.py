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
import threading
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
#: The log of every move, in the data dir (``settings.data_dir / LOG_NAME``).
LOG_NAME = "dedupe-log.jsonl"
#: send2trash checks that a trash name is free, then renames onto it, and a rename replaces what is
#: there: two moves of files with the same name at once (the page and `dedupe --yes` through the
#: daemon) could overwrite one trashed file with the other. One move at a time in this process.
_MOVING = threading.Lock()
_LOG_FAILED = "moved to the trash, but not logged"
_NOTHING_MORE = "skipped: the log could not be written, nothing more moves"


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
    results: list[Discarded] = []
    with _open_log(log_path) as log_file:
        for path in dict.fromkeys(paths):
            if results and results[-1].error is not None and results[-1].error.startswith(_LOG_FAILED):
                results.append(
                    Discarded(path, None, "skipped: the log could not be written, nothing more moves")
                )
                continue
            try:
                results.append(_discard_one(path, ctx, log_file, reason or {}))
            except LogWriteError as e:
                results.append(Discarded(path, e.trashed_to, f"{_LOG_FAILED}: {e.strerror}"))
    return results


def discard_keeping(
    paths: Sequence[str],
    kept: Sequence[str],
    ctx: Context,
    log_path: Path,
    reason: Mapping[str, Any] | None = None,
    *,
    protect: Sequence[str] = (),
) -> list[Discarded]:
    """:func:`discard` ``paths`` only while every file of ``kept`` is still there as indexed.

    For a group of duplicates: the copies go only if the one they duplicate stays. A kept file that
    vanished or changed leaves every path where it is (each result says why); a path that is also in
    ``kept``, or that a kept file is a symbolic link to, is never moved (symlinked files are indexed
    under the link's name, and moving the target would leave the kept link dangling), nor is one
    inside a folder of ``protect`` (by name or resolved: ``settings.protect``), whoever planned it.
    """
    from imgwatch.dedupe import protected_by

    # Everything held at once, for the whole call: two requests keeping each other's file (two tabs,
    # the page and the CLI) must not both pass the kept-file check and then empty the group.
    with ctx.paths.hold([*kept, *paths]):
        for keeper in kept:
            problem = _not_as_indexed(keeper, ctx)
            if problem is not None:
                why = f"kept: the file kept instead, {keeper}, {problem}"
                return [Discarded(p, None, why) for p in dict.fromkeys(paths)]
        kept_set = set(kept)
        kept_real = {os.path.realpath(k) for k in kept}
        # Another name of a kept file (a bind mount, two spellings on a case-insensitive disk, a
        # hard link) moves the kept file itself: same device and inode means the same file.
        kept_inodes = {identity for k in kept if (identity := _inode(k)) is not None}
        folders = [(os.path.normpath(d), os.path.realpath(d)) for d in protect]
        refused, going = [], []
        for path in dict.fromkeys(paths):
            resolved = os.path.realpath(path)
            if path in kept_set:
                refused.append(Discarded(path, None, "kept: it is a file to keep"))
            elif resolved in kept_real:
                refused.append(Discarded(path, None, "kept: a file to keep is a symbolic link to it"))
            elif _inode(path) in kept_inodes:
                refused.append(Discarded(path, None, "kept: it is a file to keep, under another name"))
            elif (folder := protected_by(path, resolved, folders)) is not None:
                refused.append(Discarded(path, None, f"kept: protected, inside {folder}"))
                # What a protected link points to stays too: moving it would leave the link dangling.
                kept_real.add(resolved)
                if (identity := _inode(path)) is not None:
                    kept_inodes.add(identity)
            else:
                going.append(path)
        # A protected member found after a file that it points to was judged: judge again.
        moving = [p for p in going if os.path.realpath(p) not in kept_real and _inode(p) not in kept_inodes]
        refused += [
            Discarded(p, None, "kept: a protected file is a symbolic link to it")
            for p in going
            if p not in moving
        ]
        return refused + discard(moving, ctx, log_path, reason)


def _inode(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file ``path`` names (through symbolic links), None if it cannot tell."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _open_log(log_path: Path) -> IO[str]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return log_path.open("a", encoding="utf-8")


def _discard_one(path: str, ctx: Context, log_file: IO[str], reason: Mapping[str, Any]) -> Discarded:
    with ctx.paths.hold([path]):
        problem = _not_as_indexed(path, ctx)
        if problem is not None:
            return Discarded(path, None, problem)
        try:
            trashed_to = move_to_trash(path)
        except OSError as e:
            return Discarded(path, None, f"cannot be moved to the trash: {_describe(e)}")
        # The caller's reason first: it cannot overwrite what the line says about the move itself.
        line = {**reason, "time": datetime.now(UTC).isoformat(), "path": path, "trashed_to": trashed_to}
        try:
            # ASCII JSON: a name that is not UTF-8 travels as its surrogate escapes (json.loads, then
            # os.fsencode, gives the exact bytes back), and the log stays valid UTF-8 for jq and friends.
            log_file.write(json.dumps(line) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
        except OSError as e:
            # The file is in the trash (its .trashinfo says where from) but not in the log: say so,
            # drop it from the index anyway (it is gone from its folder), and move nothing more.
            log.error("%s went to the trash at %s, but the log could not be written: %s", path, trashed_to, e)
            _forget(path, ctx)
            raise LogWriteError(path, trashed_to, e) from e
        _forget(path, ctx)
        return Discarded(path, trashed_to, None)


class LogWriteError(OSError):
    """A file went to the trash but its log line could not be written: the moves stop there."""

    def __init__(self, path: str, trashed_to: str | None, cause: OSError) -> None:
        super().__init__(
            cause.errno, f"{path} went to the trash ({trashed_to}), but the log could not be written"
        )
        self.path = path
        self.trashed_to = trashed_to


def _forget(path: str, ctx: Context) -> None:
    try:
        # The normal handler path: it takes the same path lock (re-entrant) and removes the
        # vector, then the row, as a watched deletion would.
        handle(ImageDeleted(path), ctx)
    except Exception:
        # The file is in the trash and logged; the watcher, the next `index` or reconcile drop
        # it from the index (it is gone from its folder).
        log.warning("%s is in the trash, but the index still lists it", path, exc_info=True)


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


def move_to_trash(path: str) -> str | None:
    """Move one file to its trash; returns its path there (None when that cannot be told), or
    raises ``OSError`` with the file where it was. Nothing else: no check, no log, no index."""
    with _MOVING:
        predicted = _move_to_trash(path)
    return _where_it_went(path, predicted)


def _move_to_trash(path: str) -> dict[bytes, bytes]:
    """Move ``path`` to its trash (send2trash's freedesktop.org implementation); returns the names it
    would have in each candidate trash, predicted before the move (send2trash does not say where it
    put a file; its rule: the file's name, else ``NAME N.EXT`` for the first N free in both
    ``files/`` and ``info/``). Call under ``_MOVING``."""
    # The spec's implementation itself, not send2trash's top-level choice: with PyGObject installed
    # that would be GIO, whose trash names are not reported back either and cannot be predicted.
    from send2trash import plat_other

    path_b = os.fsencode(path)
    predicted = {trash: _free_name(trash, os.path.basename(path_b)) for trash, _ in _trash_candidates(path_b)}
    plat_other.send2trash(path_b)
    return predicted


def _where_it_went(path: str, predicted: dict[bytes, bytes]) -> str | None:
    """The moved file's path in the trash, confirmed by the ``.trashinfo`` naming ``path``; None when
    it cannot be told (never a guess: the log's ``trashed_to`` is what an undo moves back)."""
    path_b = os.path.abspath(os.fsencode(path))
    candidates = _trash_candidates(path_b)
    for trash, topdir in candidates:
        name = predicted.get(trash)
        if (
            name is not None
            and _info_names(os.path.join(trash, b"info", name + _INFO_SUFFIX), topdir) == path_b
        ):
            return os.fsdecode(os.path.join(trash, b"files", name))
    for trash, topdir in candidates:
        try:
            found = _search_info(trash, topdir, path_b)
        except OSError:
            found = None
        if found is not None:
            return os.fsdecode(found)
    log.warning("%s went to the trash, but where could not be told", path)
    return None


def _trash_candidates(path_b: bytes) -> list[tuple[bytes, bytes]]:
    """``(trash dir, the dir its .trashinfo paths are relative to)`` where send2trash may put the
    file: the home trash, then those of the file's own filesystem."""
    from send2trash import plat_other

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
