"""The ``duplicates`` command: duplicate groups, and the not-duplicates verdicts, with their outputs."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from imgwatch.commands.daemon_client import running_daemon
from imgwatch.commands.exits import EXIT_OK
from imgwatch.commands.logs import quiet_libraries
from imgwatch.commands.options import html_options
from imgwatch.commands.searching import DEFAULT_THRESHOLD, write_page
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings
    from imgwatch.duplicates import DuplicateGroup
    from imgwatch.search import SearchFilter
    from imgwatch.services.catalog import SQLiteCatalog


def add_duplicates(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    duplicates = commands.add_parser(
        "duplicates",
        parents=[common],
        help="find groups of duplicate images in the index; record which are not duplicates",
        description="Group the indexed images whose vectors are at least THRESHOLD similar (cosine): "
        "resized, re-encoded or lightly edited copies. Groups are closed under similarity (a~b and "
        "b~c puts a, b and c together) and listed largest first; a group is 'exact' when all its files "
        "have the same bytes, else 'similar'. Files marked as not duplicates (--mark-distinct) are "
        "never put in one group. Streams over the vector store without loading the model; goes "
        "through the daemon when one runs.",
    )
    duplicates.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"the cosine similarity from which two images count as duplicates (default {DEFAULT_THRESHOLD})",
    )
    action = duplicates.add_mutually_exclusive_group()
    action.add_argument(
        "--exact",
        action="store_true",
        help="only byte-identical files, from the content hashes the index keeps (no vectors, no model: "
        "seconds for 100,000 files)",
    )
    action.add_argument(
        "--mark-distinct",
        nargs="+",
        metavar="FILE",
        help="record that these indexed files (two or more) are not duplicates of each other: they are "
        "never grouped together again, after renames, moves, rescans and rebuilds too (the verdict "
        "is kept by content)",
    )
    action.add_argument(
        "--verdicts",
        action="store_true",
        help="list the recorded not-duplicates verdicts, each with a file that has each content now",
    )
    action.add_argument(
        "--withdraw",
        nargs=2,
        metavar=("A", "B"),
        help="withdraw the verdict on A and B (indexed files, or the content hashes --verdicts shows)",
    )
    duplicates.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="DIR",
        help="only files inside DIR (repeatable: inside any of them); groups are formed among these "
        "files alone, as if the others were not indexed",
    )
    duplicates.add_argument(
        "--since",
        metavar="WHEN",
        help="only files modified at or after WHEN: an ISO date or date-time (2024-06-01, "
        "2024-06-01T14:30; local time unless it has an offset)",
    )
    duplicates.add_argument(
        "--until",
        metavar="WHEN",
        help="only files modified before WHEN (same forms as --since)",
    )
    duplicates.add_argument("--note", help="with --mark-distinct: a note kept with the verdict")
    duplicates.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"groups": [{"kind", "max_score", "members": [{"path", "size", '
        '"width", "height", "mtime", "score"}], "paths"}]}; with --verdicts {"verdicts": [{"a", "b", '
        '"hashes", "created_at", "note"}]}',
    )
    html_options(duplicates, "the groups, with thumbnails")
    duplicates.set_defaults(run=run_duplicates)


def run_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    verdict_action = args.mark_distinct is not None or args.verdicts or args.withdraw is not None
    if args.note is not None and args.mark_distinct is None:
        raise ImgwatchError("--note goes with --mark-distinct")
    if verdict_action or args.exact:
        if args.threshold is not None:
            raise ImgwatchError("--threshold is for look-alike groups: not with --exact or the verdicts")
        if verdict_action and args.html is not None:
            raise ImgwatchError("--html writes groups: not with --mark-distinct, --verdicts or --withdraw")
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 < threshold <= 1.0:
        raise ImgwatchError("--threshold must be above 0 and at most 1 (a cosine similarity)")
    if args.open and args.html is None:
        raise ImgwatchError("--open opens the page that --html writes: give --html OUT.html too")
    from imgwatch.search import SearchFilter

    where = SearchFilter.parse(args.under, args.since, args.until)
    if verdict_action:
        if where.active:
            raise ImgwatchError("--under, --since and --until choose groups: not with the verdicts")
        return _run_verdicts(args, settings)
    groups = _duplicate_groups(settings, threshold, where, exact=args.exact, quiet=args.log_level != "debug")
    if args.json:
        print(json.dumps({"groups": [g.as_dict() for g in groups]}))
    else:
        for number, group in enumerate(groups, 1):
            print(f"group {number} ({group.kind}): {len(group.paths)} files, best pair {group.max_score:.4f}")
            for member in group.members:
                pixels = f"{member.width}x{member.height}" if member.width is not None else "unreadable"
                print(f"  {member.score:6.4f}  {pixels:>11}  {member.size:>12,} B  {member.path}")
        if not groups:
            print(
                "no byte-identical files" if args.exact else f"no near-duplicates (threshold {threshold:g})"
            )
    if args.html is not None:
        from imgwatch.report import duplicates_page
        from imgwatch.services.files import LocalFileReader

        files = LocalFileReader(settings.max_file_bytes)
        page = duplicates_page(groups, lambda path: files.read(path).data, 1.0 if args.exact else threshold)
        write_page(args.html, page, args.open)
    return EXIT_OK


def _duplicate_groups(
    settings: Settings, threshold: float, where: SearchFilter, *, exact: bool, quiet: bool
) -> list[DuplicateGroup]:
    from imgwatch.duplicates import DuplicateGroup
    from imgwatch.ipc import DaemonClient

    daemon = running_daemon(settings)
    if daemon is not None and where.active:
        # DaemonClient.duplicates sends no filter (yet): the same request with one, no client-side
        # timeout either (one pass over the whole collection).
        body = {"threshold": threshold, "exact": exact, **where.as_dict()}
        reply = DaemonClient(settings.data_dir, timeout=None).request("POST", "/duplicates", body)
        if not reply.get("filtered"):
            raise ImgwatchError("the running daemon is older than --under/--since/--until: restart it")
        return [DuplicateGroup.from_dict(g) for g in reply["groups"]]
    if daemon is not None:
        return [DuplicateGroup.from_dict(g) for g in daemon.duplicates(threshold, exact=exact)["groups"]]
    if exact:
        from imgwatch.duplicates import find_exact_duplicates

        with _catalog_only(settings) as catalog:
            return find_exact_duplicates(catalog, where)
    from imgwatch.duplicates import find_duplicates
    from imgwatch.services.build import open_context

    with open_context(settings, command="duplicates", model=False) as ctx:
        if quiet:
            # Importing pymilvus (in open_context) re-applied its own logging config; without
            # this, every query_iterator on Milvus Lite warns "failed to get mvccTs" (harmless).
            quiet_libraries()
        return find_duplicates(ctx, threshold=threshold, where=where, scratch_dir=settings.data_dir)


def _run_verdicts(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.verdicts import looks_like_hash

    def ref(arg: str) -> str:
        # The daemon's working directory is not ours: paths travel absolute; a hash stays a hash.
        return arg if looks_like_hash(arg) and not os.path.lexists(arg) else os.path.abspath(arg)

    daemon = running_daemon(settings)
    if args.mark_distinct is not None:
        paths = [os.path.abspath(p) for p in args.mark_distinct]
        if daemon is not None:
            reply = daemon.mark_distinct(paths, args.note)
        else:
            from imgwatch.verdicts import mark_distinct

            with _catalog_only(settings) as catalog:
                reply = mark_distinct(catalog, paths, args.note).as_dict()
        verdicts = reply["verdicts"]
        heading = f"recorded {len(verdicts)} pair(s) as not duplicates ({reply['added']} new)"
    elif args.withdraw is not None:
        a, b = (ref(x) for x in args.withdraw)
        if daemon is not None:
            reply = daemon.withdraw_verdict(a, b)
        else:
            from imgwatch.verdicts import withdraw_verdict

            with _catalog_only(settings) as catalog:
                reply = {"withdrawn": withdraw_verdict(catalog, a, b).as_dict()}
        verdicts = [reply["withdrawn"]]
        heading = "withdrawn: they may be grouped again"
    else:
        if daemon is not None:
            reply = daemon.verdicts()
        else:
            from imgwatch.verdicts import list_verdicts

            with _catalog_only(settings) as catalog:
                reply = {"verdicts": [v.as_dict() for v in list_verdicts(catalog)]}
        verdicts = reply["verdicts"]
        heading = f"{len(verdicts)} pair(s) marked as not duplicates" if verdicts else "no verdicts"
    if args.json:
        print(json.dumps(reply))
        return EXIT_OK
    print(heading)
    for verdict in verdicts:
        note = f" ({verdict['note']})" if verdict["note"] else ""
        print(f"  {verdict['created_at']}  {verdict['a']}\n  {' ' * 25}  {verdict['b']}{note}")
    return EXIT_OK


@contextlib.contextmanager
def _catalog_only(settings: Settings) -> Iterator[SQLiteCatalog]:
    """The catalog alone, under the data dir's lock: what --exact and the verdicts need, without the
    vector store (no pymilvus) or the model."""
    from imgwatch.lock import DataDirLock
    from imgwatch.services.catalog import open_catalog

    lock = DataDirLock(settings.data_dir, "duplicates").acquire()
    try:
        catalog = open_catalog(settings.catalog_path)
        try:
            yield catalog
        finally:
            catalog.close()
    finally:
        lock.release()
