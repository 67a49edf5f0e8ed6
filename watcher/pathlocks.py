"""One file, one handler at a time: the paths being handled right now, shared by every caller.

The daemon's handler pool, ``imgwatch index`` sent to the daemon and reconcile's vector repair all
dispatch handlers; without a common gate two of them could handle one path at once (two
extractions, two upserts racing to the catalog). A directory's path covers every path under it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


def is_under(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (by name: nothing is resolved)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def overlap(paths: Iterable[str], others: Iterable[str]) -> bool:
    """Some path of ``paths`` is, contains or is inside some path of ``others``."""
    others = list(others)
    return any(is_under(a, b) or is_under(b, a) for a in paths for b in others)


class PathLocks:
    """Hold paths for the length of a block; re-entrant for the thread that holds them."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: dict[str, tuple[int, int]] = {}
        """Held path -> (holding thread, depth)."""

    @contextmanager
    def hold(self, paths: Iterable[str]) -> Iterator[None]:
        """Wait until no other thread holds an overlapping path, then hold ``paths``."""
        wanted = list(dict.fromkeys(paths))
        me = threading.get_ident()
        with self._changed:
            while self._taken(wanted, me):
                self._changed.wait()
            for path in wanted:
                _, depth = self._held.get(path, (me, 0))
                self._held[path] = (me, depth + 1)
        try:
            yield
        finally:
            with self._changed:
                for path in wanted:
                    owner, depth = self._held[path]
                    if depth > 1:
                        self._held[path] = (owner, depth - 1)
                    else:
                        del self._held[path]
                self._changed.notify_all()

    def busy(self, paths: Iterable[str]) -> bool:
        """Another thread holds a path overlapping ``paths`` now (for callers that must not wait)."""
        with self._changed:
            return self._taken(list(paths), threading.get_ident())

    def _taken(self, paths: list[str], me: int) -> bool:
        return any(
            owner != me and (is_under(path, held) or is_under(held, path))
            for held, (owner, _) in self._held.items()
            for path in paths
        )
