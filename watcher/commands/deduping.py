"""``imgwatch dedupe``: print the clean-up plan for the duplicate groups; with ``--yes``, carry it out.

The plan is :mod:`imgwatch.dedupe`'s; the moves are :mod:`imgwatch.trash`'s (the user's trash, a
log line each, the index told at once). With a daemon on the data dir both happen inside it, through
its socket (``POST /dedupe/plan``, then ``POST /discard`` per group), so its index forgets each file
under its own path locks; without one, here, on the services ``open_context`` builds.
"""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from imgwatch.commands.daemon_client import running_daemon
from imgwatch.commands.exits import EXIT_OK, EXIT_QUERY_FAILED
from imgwatch.errors import ImgwatchError
from imgwatch.names import DUPLICATE_THRESHOLD, KEEP_RULES

if TYPE_CHECKING:
    from pathlib import Path

    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings
    from imgwatch.context import Context
    from imgwatch.dedupe import GroupPlan, Plan
    from imgwatch.trash import Discarded

#: ``--yes`` could not move some of the planned files (they stay, each reported); the others went.
#: Status 3, as for ``search`` with unanswered queries: part of the work was done.
EXIT_NOT_ALL_DISCARDED = EXIT_QUERY_FAILED
#: The log of every move to the trash, in the data dir: JSON lines (imgwatch.trash.LOG_NAME; not
#: imported from there, which would load the runtime and the handlers for --help).
LOG_NAME = "dedupe-log.jsonl"


def add_dedupe(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    dedupe = commands.add_parser(
        "dedupe",
        parents=[common],
        help="clean up duplicates: keep one file per group, move the others to the trash",
        description="Plan the clean-up of the duplicate groups that `imgwatch duplicates` finds: per "
        "group, the file that --keep picks stays and the others are to go. Files inside a protected "
        "folder (--protect, and `protect` in the config file) always stay: in a group with protected "
        "files all of those stay and only the others go. A group with a not-duplicates verdict "
        "between two of its files is left alone. Without --yes only the plan is printed and nothing "
        "changes. With --yes the files to go are moved to your trash (freedesktop.org: "
        "$XDG_DATA_HOME/Trash), never deleted, each logged in the data dir's dedupe-log.jsonl with "
        "where it went, and the index forgets them at once; a file that changed since it was indexed, "
        "or whose kept copy is gone, stays. Goes through the daemon when one runs.",
    )
    dedupe.add_argument(
        "--keep",
        required=True,
        choices=KEEP_RULES,
        help="which file of a group stays: largest (most pixels, then bytes), smallest, oldest or newest "
        "(modification time), shortest-path; ties go to the first path in byte order",
    )
    dedupe.add_argument(
        "--protect",
        dest="protect_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="never move a file inside DIR (repeatable; added to the config file's `protect`)",
    )
    dedupe.add_argument(
        "--exact", action="store_true", help="only groups of byte-identical files (content hashes)"
    )
    dedupe.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"the cosine similarity from which two images are duplicates (default {DUPLICATE_THRESHOLD})",
    )
    dedupe.add_argument(
        "--yes",
        action="store_true",
        help="carry the plan out: move the files to go to the trash (without it nothing changes)",
    )
    dedupe.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"rule", "applied", "groups": [{"kind", "max_score", "kept": '
        '[{"path", "reason"}], "discarded": [{"path", "reason"}], "skipped"}]}; with --yes each '
        'group also has "results": [{"path", "trashed_to", "error"}]',
    )
    dedupe.set_defaults(run=run_dedupe)


def run_dedupe(args: argparse.Namespace, settings: Settings) -> int:
    if args.exact and args.threshold is not None:
        raise ImgwatchError("--threshold is for look-alike groups: not with --exact")
    threshold = DUPLICATE_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 < threshold <= 1.0:
        raise ImgwatchError("--threshold must be above 0 and at most 1 (a cosine similarity)")
    protect = list(
        dict.fromkeys(
            [*settings.protect, *(os.path.abspath(os.path.expanduser(d)) for d in args.protect_dirs)]
        )
    )
    daemon = running_daemon(settings)
    results: list[list[Discarded]] | None = None
    if daemon is not None:
        from imgwatch.dedupe import Plan
        from imgwatch.ipc import DaemonClient, DaemonUnavailableError
        from imgwatch.trash import Discarded

        # A duplicates pass over the whole collection takes minutes on a big one: no client timeout.
        daemon = DaemonClient(settings.data_dir, timeout=None)
        body = {"rule": args.keep, "protect": protect, "threshold": threshold, "exact": args.exact}
        plan = Plan.from_dict(daemon.request("POST", "/dedupe/plan", body))
        if args.yes:
            results = []
            for group in plan.to_discard:
                request = {"paths": group.discarded_paths, "kept": group.kept_paths, "protect": protect}
                try:
                    reply = daemon.request(
                        "POST", "/discard", request | {"reason": group.log_reason(plan.rule)}
                    )
                    results.append([Discarded.from_dict(d) for d in reply["discarded"]])
                except DaemonUnavailableError as e:
                    # What went before is done and reported; this group's files are not known to
                    # have moved (the daemon's log and trash say), and nothing more is asked.
                    results.append(
                        [
                            Discarded(p, None, f"unknown: the daemon did not answer: {e}")
                            for p in group.discarded_paths
                        ]
                    )
                    break
    else:
        from imgwatch.commands.logs import quiet_libraries
        from imgwatch.services.build import open_context

        with open_context(settings, command="dedupe", model=False) as ctx:
            if args.log_level != "debug":
                quiet_libraries()  # pymilvus re-applies its logging config on import
            plan = local_plan(
                ctx, args.keep, protect, threshold, exact=args.exact, scratch_dir=settings.data_dir
            )
            if args.yes:
                results = apply_plan(plan, ctx, settings.data_dir / LOG_NAME, protect)
    if args.json:
        _print_json(plan, results)
    else:
        _print_plan(plan, results)
    failed = [d for group in results or [] for d in group if not d.moved]
    return EXIT_NOT_ALL_DISCARDED if failed else EXIT_OK


def local_plan(
    ctx: Context,
    rule: str,
    protect: list[str],
    threshold: float,
    *,
    exact: bool,
    scratch_dir: Path | None = None,
) -> Plan:
    """The plan from ``ctx``'s index: what the daemon's ``POST /dedupe/plan`` answers too."""
    from imgwatch.dedupe import plan_from_index, stored_scores
    from imgwatch.duplicates import find_duplicates, find_exact_duplicates
    from imgwatch.verdicts import duplicate_catalog

    if exact:
        groups = find_exact_duplicates(ctx.catalog)
    else:  # scratch space in the data dir: /tmp may be a tmpfs, in memory
        groups = find_duplicates(ctx, threshold=threshold, scratch_dir=scratch_dir)
    near = stored_scores(ctx, threshold)
    return plan_from_index(groups, duplicate_catalog(ctx.catalog), rule, protect, os.path.realpath, near)


def apply_plan(plan: Plan, ctx: Context, log_path: Path, protect: list[str]) -> list[list[Discarded]]:
    """Each group's files to the trash, while its kept files are still there as indexed; never a
    file inside ``protect`` (the plan kept those already: this holds whatever the plan says)."""
    from imgwatch.trash import discard_keeping

    return [
        discard_keeping(
            g.discarded_paths, g.kept_paths, ctx, log_path, g.log_reason(plan.rule), protect=protect
        )
        for g in plan.to_discard
    ]


def _print_json(plan: Plan, results: list[list[Discarded]] | None) -> None:
    out: dict[str, Any] = plan.as_dict() | {"applied": results is not None}
    if results is not None:
        outcome = {id(g): r for g, r in zip(plan.to_discard, results, strict=True)}
        for group, raw in zip(plan.groups, out["groups"], strict=True):
            raw["results"] = [d.as_dict() for d in outcome.get(id(group), [])]
    print(json.dumps(out))


def _print_plan(plan: Plan, results: list[list[Discarded]] | None) -> None:
    from imgwatch.report import display_path  # a newline in a name must not print a fake line

    outcome = {id(g): r for g, r in zip(plan.to_discard, results or [], strict=False)}
    for number, group in enumerate(plan.groups, 1):
        print(f"group {number} ({group.kind}, best pair {group.max_score:.4f}){_summary(group)}")
        for kept in group.kept:
            print(f"  keep     {display_path(kept.path)}  ({kept.reason})")
        done = {d.path: d for d in outcome.get(id(group), [])}
        for gone in group.discarded:
            if group.skipped is not None:
                continue
            result = done.get(gone.path)
            if result is None:
                print(f"  discard  {display_path(gone.path)}  ({gone.reason})")
            elif result.moved:
                where = display_path(result.trashed_to) if result.trashed_to else "(where: unknown)"
                print(f"  trashed  {display_path(gone.path)}  -> {where}")
            else:
                print(f"  STAYS    {display_path(gone.path)}  (not moved: {result.error})")
    to_go = sum(len(g.discarded) for g in plan.to_discard)
    if not plan.groups:
        print("no duplicate groups")
    elif results is None:
        print(f"{to_go} file(s) to move to the trash; nothing changed (run again with --yes to move them)")
    else:
        moved = sum(d.moved for group in results for d in group)
        print(f"moved {moved} of {to_go} file(s) to the trash (log: {LOG_NAME} in the data dir)")
        if moved < to_go:
            print(f"imgwatch: {to_go - moved} file(s) could not be moved; see STAYS above", file=sys.stderr)


def _summary(group: GroupPlan) -> str:
    if group.skipped is not None:
        return f": left alone, {group.skipped}"
    return f": keep {len(group.kept)}, discard {len(group.discarded)}"
