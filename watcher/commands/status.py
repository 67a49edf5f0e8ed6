"""``imgwatch status``: what is indexed, what failed and why, where the data lives."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from imgwatch.commands.exits import EXIT_OK

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings
    from imgwatch.config.client import ClientSettings


def add_status(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status",
        parents=[common],
        help="what is indexed, what failed and why, where the data lives",
        description="Report file counts by state, vectors in Milvus, the index's extractor, the data dir, "
        "and whether a daemon serves it.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--failed", action="store_true", help="list failed files with their errors")
    status.set_defaults(run=run_status, thin=True)


def run_status(args: argparse.Namespace, settings: Settings | ClientSettings) -> int:
    report, answered = _from_daemon(settings, failures=args.failed)
    if report is None:
        from imgwatch.commands.options import full_settings
        from imgwatch.status import gather_status, with_live

        report = gather_status(full_settings(settings), include_failures=args.failed)
        if report["daemon"]["running"] and answered == "busy":
            # It took the connection but did not answer: asking again would cost the same wait.
            report["daemon"]["state"] = "not answering"
        elif report["daemon"]["running"]:
            from imgwatch.ipc import DaemonClient, DaemonUnavailableError

            try:
                live = DaemonClient(settings.data_dir, timeout=10).status()
            except DaemonUnavailableError:
                report["daemon"]["state"] = "starting"
            else:
                report = with_live(report, live)
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print("\n".join(_lines(report)))
    files = report["files"]
    if args.failed:
        for failure in report["failed_files"]:
            print(f"  failed: {failure['path']}: {failure['error']}")
    elif files["failed"]:
        print(f"({files['failed']} failed files: `imgwatch status --failed` lists them with reasons)")
    return EXIT_OK


def _from_daemon(settings: Settings | ClientSettings, *, failures: bool) -> tuple[dict[str, Any] | None, str]:
    """The report from the daemon serving the data dir, if it gives one: then this command loads
    neither SQLAlchemy nor the settings machinery. Else ``(None, why)``: ``absent`` (no daemon),
    ``starting`` (its socket does not answer yet), ``old`` (a daemon from before the report route),
    ``busy`` (it took the connection but did not answer in time)."""
    from imgwatch.ipc import DaemonClient, DaemonUnavailableError
    from imgwatch.lock import lock_holder

    holder = lock_holder(settings.data_dir)
    if holder is None or holder.command != "watch":
        return None, "absent"
    try:
        return DaemonClient(settings.data_dir, timeout=10).report(failures=failures), "report"
    except DaemonUnavailableError as e:
        if e.timed_out:
            return None, "busy"
        if e.status is None:
            return None, "starting"
        if e.status == 404:
            return None, "old"
        raise


def _lines(report: dict[str, Any]) -> list[str]:
    """The report for a terminal, one line per fact."""
    files = report["files"]
    daemon = report["daemon"]
    extractor = report["extractor"]
    vectors = report["vectors"]
    unknown = "unknown (the data dir is in use by another process)"
    lines = [
        f"data dir:   {report['data_dir']}",
        f"catalog:    {report['catalog']}",
        f"vectors:    {report['milvus_uri']} (collection {report['collection']})",
        f"daemon:     {'running, PID ' + str(daemon['pid']) if daemon['running'] else 'not running'}",
        f"files:      {files['indexed']} indexed, {files['pending']} pending, {files['failed']} failed",
        f"in Milvus:  {vectors if vectors is not None else unknown}",
    ]
    if daemon.get("store") == "opening":
        lines[-1] = "in Milvus:  not counted yet: the daemon is still loading the collection (searches wait)"
    if report.get("capacity"):
        from imgwatch.capacity import describe

        lines.append(f"capacity:   {describe(report['capacity'])}")
    if report.get("store_error"):
        lines.append(f"problem:    {report['store_error']}")
    if report["busy"] and not daemon["running"]:
        lines.append(f"in use by:  PID {report['busy']['pid']} (imgwatch {report['busy']['command']})")
    if extractor:
        lines.append(
            f"extractor:  {extractor['model']} {extractor['layer']}, weights {extractor['weights']}, "
            f"{extractor['dimension']}-d, {extractor['dtype']}, preprocessing {extractor['preprocessing']}"
        )
    else:
        lines.append(f"extractor:  (nothing indexed yet; configured weights {report['configured_weights']})")
    reindex = daemon.get("reindex") or report["reindex"]
    if reindex:
        done = f", {reindex['done']}/{reindex['total']} vectors" if "total" in reindex else ""
        lines.append(
            f"reindex:    {reindex['phase']}{done} ({reindex.get('reason') or reindex.get('collection')})"
        )
    migration = daemon.get("migration")
    if migration:
        done = f", {migration['done']}/{migration['total']} files" if migration.get("total") else ""
        lines.append(f"migration:  {migration['phase']}{done} -> {migration['target']}")
    verbs = {"index": "indexed", "watch": "watched"}
    for root in report["roots"]:
        used = f"{verbs.get(root['command'], root['command'])} {root['last_used_at'][:10]}"
        lines.append(f"root:       {root['path']} ({used}, {'exists' if root['exists'] else 'missing'})")
    for root in daemon.get("roots", []):
        guard = f"; deletions held: {root['guard']}" if root["guard"] else ""
        lines.append(f"watching:   {root['path']} ({root['watch'] or 'not watched'}{guard})")
    if daemon.get("queue"):
        queue = daemon["queue"]
        lines.append(
            f"queue:      {queue['waiting']} waiting, {queue['in_flight']} in progress, "
            f"{queue['ordered']} moves/deletes, {queue['scanning']} scans; "
            f"{daemon['journal']['pending']} journalled events unfinished"
        )
    if "model_runs" in daemon:
        loaded = "loaded" if daemon.get("model_loaded") else "not loaded yet"
        lines.append(f"model:      {daemon['model_runs']} model runs since start ({loaded})")
    if daemon.get("webhook"):
        lines.append(f"webhook:    {daemon['webhook']}")
    if daemon.get("search_page"):
        lines.append(f"search:     {daemon['search_page']}")
    for name, job in (daemon.get("jobs") or report["jobs"]).items():
        run = job.get("last_run")
        last = f"last {run['started_at']}: {run['outcome']} in {run['duration_s']} s" if run else "never run"
        upcoming = f", next {job['next_run']}" if job.get("next_run") else ""
        lines.append(f"job {name + ':':<7} {last}{upcoming}")
    return lines
