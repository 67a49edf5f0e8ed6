"""The mass-delete guard: deletions that look like a vanished disk, not like a user's clean-up.

Queued deletions under a root are held (dropped from the queue; the journal notes why) when the root
is missing or unmounted, or when they would delete a large share of its files at once. The entries
stay searchable until ``imgwatch index ROOT`` applies the deletions or the root comes back.
"""

from __future__ import annotations

import logging

from imgwatch.config import Settings
from imgwatch.daemon.ordering import Op
from imgwatch.daemon.watches import MISSING, Watches
from imgwatch.events import DirectoryDeleted, ImageDeleted
from imgwatch.services.abc import Catalog

log = logging.getLogger(__name__)


def held_deletions(deletions: list[Op], watches: Watches, catalog: Catalog, settings: Settings) -> list[Op]:
    """The deletions of ``deletions`` to hold back; sets (and logs) each affected root's guard.
    One count per root and pass, whatever the queue's length."""
    by_root: dict[str, list[Op]] = {}
    for op in deletions:
        root = watches.of(op.paths[0])
        if root is not None:
            by_root.setdefault(root.path, []).append(op)
    held: list[Op] = []
    for root_path, ops in by_root.items():
        root = watches.roots[root_path]
        reason = _reason(root_path, root.guard, ops, watches, catalog, settings)
        if reason is None:
            continue
        if root.guard != reason:
            log.warning(
                "not deleting entries under %r: %s. They stay searchable; run `imgwatch index %s` to "
                "apply the deletions if they are real",
                root_path,
                reason,
                root_path,
            )
        root.guard = reason
        held.extend(ops)
    return held


def _reason(
    root_path: str, guard: str | None, ops: list[Op], watches: Watches, catalog: Catalog, settings: Settings
) -> str | None:
    if guard is not None:
        return guard  # held until `imgwatch index ROOT` or the root's return clears it
    if not watches.present(watches.roots[root_path]) or any(op.paths[0] == root_path for op in ops):
        return MISSING
    if len(ops) < settings.mass_delete_min_files and not any(
        isinstance(op.event, DirectoryDeleted) for op in ops
    ):
        return None
    doomed = sum(1 if isinstance(op.event, ImageDeleted) else catalog.count_under(op.paths[0]) for op in ops)
    known = catalog.count_under(root_path)
    if doomed >= settings.mass_delete_min_files and doomed > settings.mass_delete_fraction * known:
        return f"{doomed} of its {known} files vanished at once"
    return None
