"""The roots the daemon watches: whether each is there (and on the filesystem it was on), its watch.

A root that disappears, or whose filesystem is unmounted, keeps its entries: its deletions are held
(``guard`` says why) until it is back, when it is watched and rescanned again. "Back" means on the
same mount as at start: after an unmount the disk underneath may well hold a folder of the same
path (a stale mount-point tree), and its emptiness must not read as "every photo was deleted".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from imgwatch.config import Settings
from imgwatch.events import ImageEvent
from imgwatch.pathlocks import is_under
from imgwatch.scan import ScanRules
from imgwatch.sources.fs import RootWatch, watch_root

log = logging.getLogger(__name__)

MISSING = "the root is missing or its filesystem is not mounted"


def mount_of(path: str) -> str | None:
    """The mount point of the filesystem ``path`` (a directory) is on; None if it is not a directory."""
    if not os.path.isdir(path):
        return None
    path = os.path.realpath(path)  # a root that is a symlink is on its target's filesystem
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


@dataclass
class WatchedRoot:
    path: str
    watch: RootWatch | None = None
    guard: str | None = None
    """Why deletions under this root are held back (missing root, mass deletion), or None."""
    watched: bool = True
    """False for S3 mount directories: only the webhook reports their changes."""
    mount: str | None = None
    """The mount point the root was on when first seen: while it is on another, it is not back."""


class Watches:
    def __init__(
        self, settings: Settings, roots: list[str], rules: ScanRules, emit: Callable[[ImageEvent], None]
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._emit = emit
        self.roots = {root: WatchedRoot(root, mount=mount_of(root)) for root in roots}
        for mount in settings.s3_mounts.values():
            self.roots.setdefault(mount, WatchedRoot(mount, watched=False))

    def watched(self) -> list[WatchedRoot]:
        return [root for root in self.roots.values() if root.watched]

    def active(self) -> list[str]:
        """The roots being watched right now."""
        return [root.path for root in self.roots.values() if root.watch is not None]

    def of(self, path: str) -> WatchedRoot | None:
        """The (innermost) root ``path`` is under."""
        matches = [r for r in self.roots.values() if is_under(path, r.path)]
        return max(matches, key=lambda r: len(r.path), default=None)

    def present(self, root: WatchedRoot) -> bool:
        """The root is a readable directory, on the mount it was on when first seen."""
        now = mount_of(root.path)
        if now is None:
            return False
        if root.mount is None or (now != root.mount and is_under(now, root.mount)):
            # Missing at first, or its disk mounted (deeper) after the daemon saw the bare mount
            # point: this is its filesystem now. A shallower mount is the stale tree underneath.
            root.mount = now
        return now == root.mount

    def start(self, root: WatchedRoot) -> bool:
        """Watch ``root``; False (with its guard set) when it is missing or cannot be watched."""
        if not self.present(root):
            root.guard = MISSING
            log.warning("root %r is missing or unmounted; watching for it to come back", root.path)
            return False
        force = self._settings.poll or root.path in self._settings.poll_roots
        try:
            root.watch = watch_root(
                root.path,
                self._rules,
                self._emit,
                force_poll=force,
                poll_interval=self._settings.poll_interval,
            )
        except OSError as e:
            root.guard = f"cannot watch: {e.strerror or e}"
            log.error("cannot watch %r: %s", root.path, e)
            return False
        return True

    def check(self) -> list[str]:
        """Notice roots that went away (deleted, unmounted) or came back; returns those to rescan."""
        returned = []
        for root in self.watched():
            present = self.present(root)
            if present and root.watch is not None and not root.watch.alive():
                # watchdog stops watching a root that was deleted (and maybe recreated since).
                log.warning("the watch on %r stopped; watching it again and rescanning", root.path)
                root.watch.stop()
                root.watch = None
            if present and root.watch is None:
                log.info("root %r is back; rescanning it", root.path)
                if root.guard == MISSING or (root.guard or "").startswith("cannot watch"):
                    root.guard = None  # a mass-delete guard stays until `imgwatch index ROOT`
                if self.start(root):
                    returned.append(root.path)
            elif not present and root.watch is not None:
                where = mount_of(root.path)
                why = "is gone" if where is None else f"is on {where!r} now, not on {root.mount!r}"
                log.warning("root %r %s (unmounted?); keeping its entries until it is back", root.path, why)
                root.guard = MISSING
                root.watch.stop()
                root.watch = None
        return returned

    def cleared(self, paths: list[str]) -> None:
        """An explicit ``index`` of ``paths`` applied (or re-checked) the held deletions."""
        for root in self.roots.values():
            if any(is_under(root.path, p) or is_under(p, root.path) for p in paths):
                root.guard = None

    def report(self) -> list[dict[str, str | None]]:
        return [
            {"path": r.path, "watch": r.watch.mode if r.watch else None, "guard": r.guard}
            for r in self.watched()
        ]

    def stop(self, deadline: float) -> None:
        """Stop every observer at once, then wait for each until ``deadline`` (monotonic)."""
        watches = [root.watch for root in self.roots.values() if root.watch is not None]
        for watch in watches:
            watch.observer.stop()
        for watch in watches:
            watch.observer.join(timeout=max(0.0, deadline - time.monotonic()))
        for root in self.roots.values():
            root.watch = None
