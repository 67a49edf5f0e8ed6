"""``imgwatch index`` and ``imgwatch forget`` sent to the running daemon (its control socket)."""

from __future__ import annotations

import os
from typing import Any

from imgwatch.config import Settings
from imgwatch.daemon.watches import Watches
from imgwatch.errors import RootInUseError
from imgwatch.indexer import normalise_root, plan, run_plan
from imgwatch.pathlocks import is_under
from imgwatch.roots import forget_root
from imgwatch.scan import ScanRules
from imgwatch.serving import Serving


class RootCommands:
    def __init__(self, settings: Settings, serving: Serving, rules: ScanRules, watches: Watches) -> None:
        self._settings = settings
        self._serving = serving
        self._rules = rules
        self._watches = watches

    def index(self, given: list[str]) -> dict[str, Any]:
        """Index ``given`` now; :class:`ImgwatchError` for a bad root. Its handlers take the same
        path locks as the daemon's, so no file is handled by two threads at once."""
        roots = [normalise_root(root) for root in given]
        self._serving.current.catalog.remember_roots(roots, "index")
        with self._serving.use() as ctx:
            summary = run_plan(plan(roots, self._rules, ctx), ctx, workers=self._settings.workers)
        self._watches.cleared(roots)  # an explicit index applied (or re-checked) held deletions
        return summary.as_dict()

    def forget(self, root: str) -> dict[str, Any]:
        """Drop ``root``'s entries; refused for a root the daemon watches."""
        path = normalise_root(root) if os.path.isdir(root) else os.path.abspath(root)
        if any(is_under(path, r) or is_under(r, path) for r in self._watches.roots):
            raise RootInUseError(path)
        with self._serving.use() as ctx:
            return {"root": path, "removed": forget_root(ctx, path)}
