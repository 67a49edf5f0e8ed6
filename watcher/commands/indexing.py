"""The commands that change the index: ``index``, ``compact``, ``reindex`` and ``forget``."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from imgwatch.commands.daemon_client import running_daemon
from imgwatch.commands.exits import EXIT_FATAL, EXIT_OK
from imgwatch.commands.scope import is_under, remembered, scan_rules
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings
    from imgwatch.services.build import Services


def add_index(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    index = commands.add_parser(
        "index",
        parents=[common],
        help="bring the index in line with folders: add, update, move, remove",
        description="Walk ROOTs recursively and bring the index in line with them: index new and changed "
        "images, follow renames without re-running the model, drop vanished files. Per-file "
        "failures are reported and do not change the exit code. The index remembers its ROOTs: "
        "`reindex` and `watch` without arguments use them, `forget ROOT` drops one.",
    )
    index.add_argument("roots", nargs="+", metavar="ROOT", help="a folder to index")
    index.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="drop every vector and extract all files again (after changing the extractor)",
    )
    index.add_argument("--batch-size", type=int, default=None, help="images per model batch (default 16)")
    index.set_defaults(run=run_index)


def add_compact(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    compact = commands.add_parser(
        "compact",
        parents=[common],
        help="reclaim space: Milvus compaction, journal pruning, SQLite upkeep",
        description="Run the compaction job now (the daemon also runs it nightly): flush and compact "
        "the Milvus collection, prune old journal rows, checkpoint and (when worth it) VACUUM the "
        "catalog. Goes through the daemon when one runs.",
    )
    compact.add_argument("--json", action="store_true", help="print the job's report as JSON")
    compact.set_defaults(run=run_job)


def add_reindex(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    reindex = commands.add_parser(
        "reindex",
        parents=[common],
        help="repair drift; move the index to changed weights, PCA or ANN index",
        description="Run the reconcile job now (the daemon also runs it hourly): bring the catalog in "
        "line with the roots, re-create vectors missing from Milvus (copied from a same-content file "
        "or extracted again), delete Milvus entities no file vouches for, retry failed files. Then, if "
        "the configured weights, --pca or index type differ from the index's, build the new collection "
        "beside the old one and switch to it (searches keep answering meanwhile). Goes through the "
        "daemon when one runs (its roots, reindexing in the background); else ROOTs, the config "
        "file's roots, or the roots the index remembers.",
    )
    reindex.add_argument("roots", nargs="*", metavar="ROOT", help="a folder to reconcile (without a daemon)")
    reindex.add_argument("--json", action="store_true", help="print the job's report as JSON")
    reindex.set_defaults(run=run_job)


def add_forget(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    forget = commands.add_parser(
        "forget",
        parents=[common],
        help="drop a remembered root and remove its files from the index",
        description="Forget ROOT: `reindex` and `watch` no longer use it, and every indexed file at or "
        "below it leaves the index (catalog rows and their vectors), whether or not the files still "
        "exist. A folder that is not remembered but has indexed files under it is cleaned out too. "
        "Goes through the daemon when one runs; a daemon that watches ROOT refuses (stop it, or "
        "restart it without ROOT, first).",
    )
    forget.add_argument("root", metavar="ROOT", help="the folder to forget (it need not exist any more)")
    forget.add_argument(
        "--json", action="store_true", help='print one JSON object: {"root": ..., "removed": N}'
    )
    forget.set_defaults(run=run_forget)


def run_index(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.indexer import normalise_root

    roots = [normalise_root(root) for root in args.roots]
    daemon = running_daemon(settings)
    if daemon is not None and args.rebuild:
        raise ImgwatchError("stop the daemon (imgwatch watch) before `index --rebuild`")
    if daemon is not None:
        result = daemon.index(roots)
    else:
        # Only here: sent to a daemon, the command is a thin client and loads none of this.
        from tqdm import tqdm

        from imgwatch.indexer import plan, run_plan
        from imgwatch.services.build import open_services
        from imgwatch.services.lazy_store import open_now

        with open_services(settings, command="index", rebuild=args.rebuild, lazy_store=True) as services:
            ctx = services.ctx
            work = plan(roots, scan_rules(settings), ctx)
            if work.changes or work.deletions:  # moves alone need no store (LazyStore.movable)
                open_now(ctx.vectors)  # before any model load: an unreachable server fails at once
            ctx.catalog.remember_roots(roots, "index")  # once the store is known to answer
            with tqdm(
                total=work.total - work.unchanged,
                unit="img",
                file=sys.stderr,
                delay=0.5,
                disable=not sys.stderr.isatty(),
            ) as bar:
                summary = run_plan(
                    work,
                    ctx,
                    workers=settings.workers,
                    on_handled=lambda _event, _outcome: bar.update(),
                )
            result = summary.as_dict()
            result["reindex"] = reindex_now(services)
    for failure in result["failures"]:
        print(f"imgwatch: failed: {failure['path']}: {failure['error']}", file=sys.stderr)
    for skipped in result["skipped"]:
        print(f"imgwatch: skipped: {skipped['path']}: {skipped['error']} (left as it was)", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        shown = ("failures", "skipped", "reindex", "seconds")
        counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in result.items() if name not in shown)
        print(f"{counts} in {result['seconds']:.1f} s ({', '.join(roots)})")
    return EXIT_OK


def reindex_now(services: Services) -> dict[str, int] | None:
    """Apply a pending PCA or ANN-index change in the foreground; None when there was none.

    Not enough vectors for the PCA yet is a warning: the index stays full-size and works."""
    from imgwatch.reindex import Reindexer
    from imgwatch.services.pca import NotEnoughSamplesError

    reindexer = Reindexer(services)
    step = reindexer.pending()
    if step is None:
        return None
    print(f"imgwatch: reindexing: {step.reason}", file=sys.stderr)
    try:
        return reindexer.run()
    except NotEnoughSamplesError as e:
        print(f"imgwatch: warning: {e}", file=sys.stderr)
        return None


def run_job(args: argparse.Namespace, settings: Settings) -> int:
    """``compact`` or ``reindex`` (the reconcile job, then a pending reindex)."""
    from imgwatch import jobs
    from imgwatch.indexer import normalise_root
    from imgwatch.services.build import open_services

    name = "compact" if args.command == "compact" else "reconcile"
    daemon = running_daemon(settings)
    if daemon is not None:
        report = daemon.request("POST", f"/jobs/{name}")
    else:
        roots: list[str] = []
        if name == "reconcile":  # before the model loads: a missing root fails at once
            given = args.roots or settings.roots or remembered(settings, "reindex")
            roots = [normalise_root(root) for root in given]
        with open_services(settings, command=args.command) as services:
            ctx = services.ctx
            if name == "compact":
                report = jobs.run_recorded(name, lambda: jobs.compact(ctx), ctx)
            else:
                workers = settings.workers
                report = jobs.run_recorded(
                    name, lambda: jobs.reconcile(ctx, roots, scan_rules(settings), workers=workers), ctx
                )
                if report["outcome"] == "ok":
                    report["reindex"] = reindex_now(services)
    if args.json:
        print(json.dumps(report))
    else:
        counts = ", ".join(f"{key} {value}" for key, value in report["counts"].items())
        print(f"{name}: {report['outcome']} in {report['duration_s']} s ({counts})")
        if report["error"]:
            print(f"  error: {report['error']}")
        if report.get("reindex"):
            print(f"reindex: {report['reindex']}")
    return EXIT_OK if report["outcome"] == "ok" else EXIT_FATAL


def run_forget(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.ipc import DaemonClient, DaemonUnavailableError
    from imgwatch.roots import forget_root, remembered_roots
    from imgwatch.services.build import open_context

    root = os.path.abspath(os.fsdecode(args.root))
    if running_daemon(settings) is not None:
        try:
            # Removing a big root's vectors can take a while: no client-side timeout (as for index).
            result = DaemonClient(settings.data_dir, timeout=None).request(
                "POST", "/roots/forget", {"root": root}
            )
        except DaemonUnavailableError as e:
            raise ImgwatchError(f"cannot forget {root}: {e}") from e
    else:
        with open_context(settings, command="forget", model=False) as ctx:
            result = {"root": root, "removed": forget_root(ctx, root)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"forgot {result['root']}: {result['removed']} file(s) removed from the index")
    # A root that still covers it (or lies inside it) would bring files back at the next reindex.
    others = [r.path for r in remembered_roots(settings)] + [os.path.abspath(r) for r in settings.roots]
    for other in dict.fromkeys(others):
        if other != root and (is_under(root, other) or is_under(other, root)):
            print(
                f"imgwatch: warning: {other} is still a root and overlaps {root}: "
                "`imgwatch reindex` and `watch` will index what lies in both again",
                file=sys.stderr,
            )
    return EXIT_OK
