"""The ``check`` command: "do I already have this?", with an answer a script reads from the exit status."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from imgwatch.commands.daemon_client import running_daemon
from imgwatch.commands.exits import EXIT_OK, EXIT_QUERY_FAILED
from imgwatch.commands.searching import DEFAULT_THRESHOLD
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.check import CheckResult
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings

#: ``check``: at least one image has no match (as grep's 1: nothing found). The others: 0 when every
#: image has one, EXIT_QUERY_FAILED (3) when one could not be read or decoded.
EXIT_NOT_FOUND = 1


def add_check(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    check = commands.add_parser(
        "check",
        parents=[common],
        help="do I already have these images? their best indexed match, or none",
        description="For each IMAGE, its best indexed match at or above THRESHOLD (cosine), one line "
        "per image. A match is 'exact' when the indexed file has the image's bytes (found by content "
        "hash, without running the model), else 'similar'. Exit status: 0 when every image has a "
        "match, 1 when at least one has none, 3 when one is not a readable image (the others are "
        "still checked). Goes through the daemon when one runs.",
    )
    check.add_argument("images", nargs="+", metavar="IMAGE", help="an image file to look for in the index")
    check.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"the cosine similarity from which a match counts (default {DEFAULT_THRESHOLD}, as duplicates)",
    )
    check.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="DIR",
        help="only matches inside DIR (repeatable: inside any of them)",
    )
    check.add_argument(
        "--since",
        metavar="WHEN",
        help="only matches modified at or after WHEN: an ISO date or date-time (2024-06-01, "
        "2024-06-01T14:30; local time unless it has an offset)",
    )
    check.add_argument(
        "--until", metavar="WHEN", help="only matches modified before WHEN (same forms as --since)"
    )
    check.add_argument(
        "--crops",
        action="store_true",
        help="also check with each image's centre and four corners at 80%% of each side, so a cropped "
        "copy can count as a match (6 model runs per image instead of 1); an exact match still needs "
        "none",
    )
    check.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per image and line: {"query": ..., "match": {"path", "score", "kind"} or '
        'null} (and "error" for an image that could not be checked)',
    )
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    # As for search: SQLAlchemy, pymilvus and torch only where no daemon answers.
    # Imported here, not when the parser is built: imgwatch.check would cost every other command's
    # start-up (thin clients included) some 40 ms of imports.
    from imgwatch.check import CheckResult
    from imgwatch.search import SearchFilter, read_queries
    from imgwatch.services.files import LocalFileReader

    threshold = args.threshold
    if not 0.0 < threshold <= 1.0:
        raise ImgwatchError("--threshold must be above 0 and at most 1 (a cosine similarity)")
    where = SearchFilter.parse(args.under, args.since, args.until)
    queries = read_queries(list(args.images), LocalFileReader(settings.max_file_bytes))
    daemon = running_daemon(settings)
    if daemon is not None and (where.active or args.crops):
        # DaemonClient.check (imgwatch.ipc, not this module's) sends no filter: the same request with one.
        from imgwatch.ipc import _encoded

        body = {"threshold": threshold, "queries": _encoded(queries), **where.as_dict()}
        if args.crops:
            body["crops"] = True
        reply = daemon.request("POST", "/check", body)
        if not reply.get("filtered"):
            # A daemon from before the filters ignored them, and crops (its request model took any field).
            raise ImgwatchError(
                "the running daemon is older than --under/--since/--until/--crops: restart it"
            )
        results = [CheckResult.from_dict(raw) for raw in reply["results"]]
    elif daemon is not None:
        results = [CheckResult.from_dict(raw) for raw in daemon.check(queries, threshold)]
    else:
        from imgwatch.check import check_images
        from imgwatch.services.build import open_context

        with open_context(settings, command="check") as ctx:
            results = check_images(queries, ctx, threshold=threshold, where=where, crops=args.crops)
    for result in results:
        print(json.dumps(result.as_dict()) if args.json else _line(result, threshold), flush=True)
    failed = [r for r in results if r.error is not None]
    for result in failed:
        print(f"imgwatch: cannot check {result.query}: {result.error}", file=sys.stderr)
    if failed:
        return EXIT_QUERY_FAILED
    return EXIT_NOT_FOUND if any(r.match is None for r in results) else EXIT_OK


def _line(result: CheckResult, threshold: float) -> str:
    if result.error is not None:
        return f"{result.query}: error: {result.error}"
    if result.match is None:
        return f"{result.query}: no match at or above {threshold:g}"
    match = result.match
    where = f"[{match.node}] " if match.node is not None else ""
    return f"{result.query}: {match.kind.value} {match.score:.4f} {where}{match.path}"
