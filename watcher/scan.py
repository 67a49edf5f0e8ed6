"""Walking roots: which image files exist now, and where we could not look."""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)
#: The only answers of ``stat()`` that mean "nothing is there". EACCES, EIO, ELOOP and the rest mean
#: "we cannot tell now": a file behind them may well exist, so its entry must not be deleted.
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})


@dataclass(frozen=True)
class ScanRules:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_symlinks: bool = False


@dataclass
class ScanResult:
    root: str
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Image files found: path -> (size, mtime_ns)."""
    broken: list[str] = field(default_factory=list)
    """Image-named symlinks whose target is missing or loops: reported as failures, not silently
    skipped."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Directories we could not list and entries we could not stat (for another reason than their
    absence), with why: nothing at or below these paths may be taken as deleted."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of the unreadable directories and image files among them, to report."""


def describe_os_error(error: OSError) -> str:
    """Why a file or directory could not be looked at, in a few words."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    return error.strerror or str(error)


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _matches(patterns: tuple[str, ...], relative: str, name: str) -> bool:
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def scan(root: str, rules: ScanRules) -> ScanResult:
    """Every image file below ``root`` (an absolute directory path) that the rules admit.

    Symlinked files are listed under the link's path. Symlinked directories are entered only with
    ``follow_symlinks``, each real directory once (so a link back up the tree cannot loop).
    Raises ``OSError`` if ``root`` itself cannot be listed.
    """
    result = ScanResult(root=root)
    root_stat = os.stat(root)
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino)}
    stack = [root]
    first = True
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listing = list(entries)
        except OSError as e:
            if first:
                raise
            log.warning("cannot list %r (%s); files below it are left as they were", directory, e.strerror)
            reason = f"cannot list directory: {describe_os_error(e)}"
            result.unreadable[directory] = reason
            if e.errno not in GONE_ERRNOS:  # vanished since we saw it: nothing to report
                result.skipped.append((directory, reason))
            continue
        first = False
        for entry in listing:
            _visit(entry, root, rules, result, stack, seen_dirs)
    return result


def _visit(
    entry: os.DirEntry[str],
    root: str,
    rules: ScanRules,
    result: ScanResult,
    stack: list[str],
    seen_dirs: set[tuple[int, int]],
) -> None:
    name = entry.name
    if name.startswith(".") and not rules.include_hidden:
        return
    # Every entry's path starts with the root (``os.path.relpath`` cost a third of a 20,000-file scan).
    relative = entry.path[len(root) :].lstrip(os.sep)
    if rules.exclude and _matches(rules.exclude, relative, name):
        return
    try:
        is_link = entry.is_symlink()
        info = os.stat(entry.path) if is_link else entry.stat(follow_symlinks=False)
    except OSError as e:
        _unstattable(entry, e, relative, rules, result)
        return
    if stat.S_ISDIR(info.st_mode):
        if is_link and not rules.follow_symlinks:
            return
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            log.info("not entering %r again: it leads to a directory already scanned", entry.path)
            return
        seen_dirs.add(key)
        stack.append(entry.path)
        return
    if not stat.S_ISREG(info.st_mode) or not has_image_extension(name):
        return
    if rules.include and not _matches(rules.include, relative, name):
        return
    result.files[entry.path] = (info.st_size, info.st_mtime_ns)


def _unstattable(
    entry: os.DirEntry[str], error: OSError, relative: str, rules: ScanRules, result: ScanResult
) -> None:
    """An entry listed in its directory whose ``stat()`` failed.

    Gone (ENOENT, ENOTDIR): it vanished since the listing, or is a symlink to nothing. A symlink loop
    (ELOOP) named like an image is a broken link too: recorded as failed by its handler, row kept.
    Anything else (EACCES in a directory we may list but not enter, EIO, ...) says nothing about
    whether the file is there: it is left as it was, and so is everything below it (it may be a
    directory), like a directory that could not be listed.
    """
    name, path = entry.name, entry.path
    image_named = has_image_extension(name)
    if error.errno in GONE_ERRNOS or (error.errno == errno.ELOOP and image_named and os.path.islink(path)):
        if image_named and os.path.islink(path):
            result.broken.append(path)
        return
    reason = f"cannot stat: {describe_os_error(error)}"
    log.warning("%s: %s; left as it was", path, reason)
    result.unreadable[path] = reason
    admitted = image_named and not (rules.include and not _matches(rules.include, relative, name))
    if admitted or _may_be_directory(entry):
        result.skipped.append((path, reason))


def _may_be_directory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return True  # the listing did not say, and stat() failed: it may be one
