"""Walking roots: which image files exist now, and where we could not look."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)


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
    """Image-named symlinks whose target is missing: reported as failures, not silently skipped."""
    unreadable_dirs: list[str] = field(default_factory=list)
    """Directories we could not list: nothing under them may be taken as deleted."""


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
            result.unreadable_dirs.append(directory)
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
    relative = os.path.relpath(entry.path, root)
    if rules.exclude and _matches(rules.exclude, relative, name):
        return
    try:
        is_link = entry.is_symlink()
        info = os.stat(entry.path) if is_link else entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        if has_image_extension(name) and os.path.islink(entry.path):
            result.broken.append(entry.path)
        return
    except OSError as e:
        log.warning("cannot stat %r: %s", entry.path, e.strerror)
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
