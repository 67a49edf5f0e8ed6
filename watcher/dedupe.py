"""The clean-up plan: which file of each duplicate group to keep, and which to discard.

Pure: :func:`plan_groups` decides from the facts it is given (the groups of
:mod:`imgwatch.duplicates`, each member's catalog row, the verdicts, the protected folders) and
touches nothing. :func:`plan_from_index` gathers those facts from a catalog and a path resolver it is
given. Carrying a plan out is :func:`imgwatch.trash.discard_keeping`'s job, one group at a time.

The rules a careful user relies on, enforced here and not only by the callers:

- one file of each group is kept, by the rule (ties broken by path, in byte order), so a group is
  never discarded whole;
- every member inside a protected folder is kept, and then only the unprotected members go;
- a group with a not-duplicates verdict between two of its members is left alone (the groups of
  ``find_duplicates`` already respect verdicts: this holds for a verdict recorded since, too);
- a group with a member the catalog no longer has is left alone (the pass ran while it changed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

from imgwatch.duplicates import EXACT
from imgwatch.names import KEEP_RULES
from imgwatch.pathlocks import is_under

if TYPE_CHECKING:
    from imgwatch.context import Context
    from imgwatch.duplicates import DuplicateGroup
    from imgwatch.services.abc import FileRecord
    from imgwatch.verdicts import DuplicateCatalog


@dataclass(frozen=True)
class Member:
    """What the plan knows of one file of a group."""

    path: str
    size: int
    """Bytes, as the catalog has them."""
    mtime_ns: int
    """Modification time, as the catalog has it."""
    pixels: int | None
    """Width times height from the image header; None when it cannot be read."""
    content_hash: str | None
    protected_by: str | None = None
    """The protected folder it is inside, or None."""


@dataclass(frozen=True)
class Decision:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class GroupPlan:
    """One group's fate: the files kept, the files to discard, or why it is left alone."""

    kind: str
    max_score: float
    kept: list[Decision]
    discarded: list[Decision] = field(default_factory=list)
    skipped: str | None = None
    """Why nothing of this group goes (a verdict, a member gone, all protected); None otherwise."""

    @property
    def kept_paths(self) -> list[str]:
        return [d.path for d in self.kept]

    @property
    def discarded_paths(self) -> list[str]:
        return [d.path for d in self.discarded]

    def log_reason(self, rule: str) -> dict[str, Any]:
        """What each discarded file's log line says of why it went."""
        return {"kept": self.kept_paths, "kind": self.kind, "score": self.max_score, "rule": rule}

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "max_score": self.max_score,
            "kept": [d.as_dict() for d in self.kept],
            "discarded": [d.as_dict() for d in self.discarded],
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GroupPlan:
        def decisions(key: str) -> list[Decision]:
            return [Decision(d["path"], d["reason"]) for d in raw.get(key, [])]

        return cls(
            raw["kind"],
            float(raw["max_score"]),
            decisions("kept"),
            decisions("discarded"),
            raw.get("skipped"),
        )


@dataclass(frozen=True)
class Plan:
    rule: str
    groups: list[GroupPlan]

    @property
    def to_discard(self) -> list[GroupPlan]:
        """The groups with files to discard."""
        return [g for g in self.groups if g.discarded and g.skipped is None]

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "groups": [g.as_dict() for g in self.groups]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Plan:
        return cls(raw["rule"], [GroupPlan.from_dict(g) for g in raw["groups"]])


def _order(path: str) -> bytes:
    return os.fsencode(path)


#: For each rule, a sort key whose smallest member is the one kept; the path breaks every tie.
_RULES: Mapping[str, Callable[[Member], tuple[Any, ...]]] = {
    # An unreadable header (no pixels) ranks below every readable file, for either size rule.
    "largest": lambda m: (m.pixels is None, -(m.pixels or 0), -m.size, _order(m.path)),
    "smallest": lambda m: (m.pixels is None, m.pixels or 0, m.size, _order(m.path)),
    "oldest": lambda m: (m.mtime_ns, _order(m.path)),
    "newest": lambda m: (-m.mtime_ns, _order(m.path)),
    "shortest-path": lambda m: (len(_order(m.path)), _order(m.path)),
}

_RULE_SAYS = {
    "largest": "the most pixels, then bytes",
    "smallest": "the fewest pixels, then bytes",
    "oldest": "the oldest modification time",
    "newest": "the newest modification time",
    "shortest-path": "the shortest path",
}


def plan_group(
    group: DuplicateGroup,
    members: Mapping[str, Member],
    apart: Mapping[str, set[str]],
    rule: str,
    near: Near | None = None,
) -> GroupPlan:
    """What to do with one group, given its members' facts (by path) and the verdicts (hash -> the
    hashes judged distinct from it).

    ``near`` (a look-alike group's threshold and a scorer) keeps a member whose own best score to the
    kept files is under the threshold: a look-alike group is a chain (A like B, B like C), and C may
    look nothing like A, the file kept."""
    if rule not in _RULES:
        raise ValueError(f"unknown keep rule {rule!r}; the rules are {', '.join(KEEP_RULES)}")
    missing = [p for p in group.paths if p not in members]
    if missing:
        return GroupPlan(group.kind, group.max_score, [], skipped=f"{missing[0]} is no longer in the index")
    # In byte order whatever order the group came in: the same facts always give the same plan.
    files = sorted((members[p] for p in group.paths), key=lambda m: _order(m.path))
    for a, b in combinations(files, 2):
        if a.content_hash and b.content_hash and b.content_hash in apart.get(a.content_hash, set()):
            why = f"a verdict says {a.path} and {b.path} are not duplicates"
            return GroupPlan(group.kind, group.max_score, [], skipped=why)
    protected = [m for m in files if m.protected_by is not None]
    if protected:
        kept = [Decision(m.path, f"protected: inside {m.protected_by}") for m in protected]
        others = [m for m in files if m.protected_by is None]
        if not others:
            return GroupPlan(group.kind, group.max_score, kept, skipped="every file is in a protected folder")
        return _unchained(
            GroupPlan(
                group.kind,
                group.max_score,
                kept,
                [Decision(m.path, "a copy of a protected file") for m in others],
            ),
            group,
            near,
        )
    ranked = sorted(files, key=_RULES[rule])
    keeper, others = ranked[0], ranked[1:]
    return _unchained(
        GroupPlan(
            group.kind,
            group.max_score,
            [Decision(keeper.path, f"{rule}: {_RULE_SAYS[rule]}")],
            [Decision(m.path, f"duplicate of {keeper.path}") for m in others],
        ),
        group,
        near,
    )


@dataclass(frozen=True)
class Near:
    """A look-alike group's bar for each file that goes: its own best score to a kept file."""

    threshold: float
    score: Callable[[str, Sequence[str]], float | None]
    """``(path, kept paths)`` -> the best cosine similarity between them; None when unknown."""


def _unchained(plan: GroupPlan, group: DuplicateGroup, near: Near | None) -> GroupPlan:
    if near is None or group.kind == EXACT or not plan.discarded:
        return plan
    kept = [d.path for d in plan.kept]
    going: list[Decision] = []
    staying = list(plan.kept)
    for decision in plan.discarded:
        score = near.score(decision.path, kept)
        if score is not None and score >= near.threshold:
            going.append(decision)
        else:
            shown = "unknown" if score is None else f"{score:.4f}"
            why = f"kept: not itself a look-alike of a file kept (best score {shown}, under {near.threshold})"
            staying.append(Decision(decision.path, why))
    if not going:
        return GroupPlan(plan.kind, plan.max_score, [], skipped="no file is a look-alike of the one kept")
    return GroupPlan(plan.kind, plan.max_score, staying, going)


def plan_groups(
    groups: Sequence[DuplicateGroup],
    members: Mapping[str, Member],
    apart: Mapping[str, set[str]],
    rule: str,
    near: Near | None = None,
) -> Plan:
    """:func:`plan_group` for each group, in the groups' order."""
    return Plan(rule, [plan_group(g, members, apart, rule, near) for g in groups])


def protected_by(path: str, resolved: str, protect: Sequence[tuple[str, str]]) -> str | None:
    """The folder of ``protect`` (``(as given, resolved)`` pairs) that holds ``path``, by its name or
    by its resolved name (``resolved``): a folder reached through a symlink protects the same files."""
    for folder, real in protect:
        if is_under(path, folder) or is_under(resolved, real):
            return folder
    return None


def plan_from_index(
    groups: Sequence[DuplicateGroup],
    catalog: DuplicateCatalog,
    rule: str,
    protect: Sequence[str],
    resolve: Callable[[str], str],
    near: Near | None = None,
) -> Plan:
    """The plan for ``groups``, with each member's facts from ``catalog`` (its row; its pixels from
    the group) and the verdicts recorded there; ``resolve`` resolves symlinks (``os.path.realpath``);
    ``near``: see :func:`plan_group` (:func:`stored_scores` gives one from the index)."""
    from imgwatch.verdicts import kept_apart

    folders = [(os.path.normpath(d), resolve(d)) for d in protect]
    members: dict[str, Member] = {}
    for group in groups:
        for member in group.members or []:
            record: FileRecord | None = catalog.get(member.path)
            if record is None:
                continue
            pixels = member.width * member.height if member.width and member.height else None
            where = protected_by(member.path, resolve(member.path), folders)
            members[member.path] = Member(
                member.path, record.size, record.mtime_ns, pixels, record.content_hash, where
            )
    return plan_groups(groups, members, kept_apart(catalog), rule, near)


def stored_scores(ctx: Context, threshold: float) -> Near:
    """:class:`Near` from the index's stored vectors (unit length: the dot product is the cosine)."""
    import numpy as np

    def score(path: str, kept: Sequence[str]) -> float | None:
        records = [ctx.catalog.get(p) for p in (path, *kept)]
        ids = [r.id for r in records if r is not None]
        if len(ids) != len(records):
            return None
        vectors = ctx.vectors.get_vectors(ids)
        if any(i not in vectors for i in ids):
            return None
        mine = np.asarray(vectors[ids[0]], dtype=np.float32)
        return max(float(mine @ np.asarray(vectors[i], dtype=np.float32)) for i in ids[1:])

    return Near(threshold, score)
