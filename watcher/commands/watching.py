"""The commands that act on events: ``watch`` (the daemon) and ``invoke`` (one recorded event)."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imgwatch.commands.daemon_client import running_daemon
from imgwatch.commands.exits import EXIT_OK, exit_status
from imgwatch.commands.scope import remembered, scan_rules
from imgwatch.errors import ImgwatchError
from imgwatch.names import ENV_SEARCH_PAGE

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings


def add_watch(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    watch = commands.add_parser(
        "watch",
        parents=[common],
        help="run the daemon: keep the index in step with folders in real time",
        description="Watch ROOTs (or the config file's `roots`, else the roots the index remembers) and "
        "keep the index in step with them: new, "
        "changed, moved and deleted images are reflected within about a second. Catches up "
        "with changes made while it was down. Runs in the foreground and logs to stderr; "
        "SIGTERM or Ctrl-C stops it cleanly, a second one at once. While it runs, search, "
        "status and index go through it.",
    )
    watch.add_argument("roots", nargs="*", metavar="ROOT", help="a folder to watch (recursively)")
    watch.add_argument(
        "--poll",
        action="store_true",
        default=None,
        help="poll every root instead of using inotify (network filesystems are polled anyway)",
    )
    watch.add_argument("--poll-interval", type=float, default=None, help="seconds between polls (default 5)")
    watch.add_argument("--batch-size", type=int, default=None, help="images per model batch (default 16)")
    watch.add_argument(
        "--webhook",
        metavar="HOST:PORT",
        default=None,
        help="also accept events over HTTP (POST /events; GET /healthz, /metrics); token from "
        "IMGWATCH_WEBHOOK_TOKEN, required unless HOST is loopback",
    )
    watch.add_argument(
        "--search-page",
        metavar="HOST:PORT",
        default=None,
        help="also serve a search page for the browser at http://HOST:PORT/ (drop an image, see the "
        f"similar ones, click for more like this; env {ENV_SEARCH_PAGE}); off HOST loopback it requires "
        "the webhook token (IMGWATCH_WEBHOOK_TOKEN), given once as /?token=TOKEN",
    )
    watch.set_defaults(run=run_watch)


def add_invoke(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    invoke = commands.add_parser(
        "invoke",
        parents=[common],
        help="run the handlers on one recorded event file (generic or S3 format)",
        description='Read EVENT.json (a webhook body: generic {"events": [...]} or S3 {"Records": [...]}) '
        "and act on it as the webhook would: through the daemon when one runs, else directly. Paths "
        "must lie in the configured roots or S3 mounts when any are configured.",
    )
    invoke.add_argument("event_file", metavar="EVENT.json", type=Path, help="the event payload to replay")
    invoke.add_argument("--json", action="store_true", help="print the result as one JSON object")
    invoke.set_defaults(run=run_invoke)


def run_watch(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.daemon import Daemon
    from imgwatch.services.build import open_services

    given = args.roots or settings.roots or remembered(settings, "watch")
    roots = [os.path.abspath(os.fsdecode(root)) for root in given]
    from imgwatch.sources.webhook import is_loopback, parse_bind

    for bind, option in ((settings.webhook, "--webhook"), (settings.search_page, "--search-page")):
        if bind:
            host, _ = parse_bind(bind, option)
            if settings.webhook_token is None and not is_loopback(host):
                raise ImgwatchError(
                    f"refusing to listen on {host} ({option}) without a token: set IMGWATCH_WEBHOOK_TOKEN"
                )
    # The store opens in the background once the daemon runs (Daemon._open_store): at 100,000
    # vectors Milvus Lite takes half a minute to load, which start-up and status need not wait for.
    with open_services(settings, command="watch", lazy_store=True) as services:
        services.catalog.remember_roots(roots, "watch")
        daemon = Daemon(services, roots, scan_rules(settings))
        try:
            code = daemon.run()
        except ImgwatchError as e:
            if not daemon.unfinished_threads:
                raise
            print(f"imgwatch: error: {e}", file=sys.stderr)
            code = exit_status(e)
        if daemon.unfinished_threads:
            # Past the shutdown bound: closing the stores under running handlers could corrupt
            # them; leaving now cannot (their work stays in the journal, as after a crash).
            logging.shutdown()
            sys.stderr.flush()
            os._exit(code)
        return code


def run_invoke(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.events import DirectoryCreated, Source
    from imgwatch.indexer import plan, run_plan
    from imgwatch.runtime import dispatch
    from imgwatch.services.build import open_context
    from imgwatch.sources.webhook import (
        ForbiddenPathError,
        InvalidEventError,
        MalformedBodyError,
        allowed_paths,
        parse_body,
    )

    try:
        body = args.event_file.read_bytes()
    except OSError as e:
        raise ImgwatchError(f"cannot read {args.event_file}: {e.strerror or e}") from e
    daemon = running_daemon(settings)
    if daemon is not None:
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise ImgwatchError(f"{args.event_file} is not JSON: {e}") from e
        result = daemon.request("POST", "/invoke", {"payload": payload})
    else:
        allowed = allowed_paths(settings.roots, settings.s3_mounts)
        try:
            parsed = parse_body(body, allowed, Source.WEBHOOK)
        except (MalformedBodyError, InvalidEventError, ForbiddenPathError) as e:
            raise ImgwatchError(f"{args.event_file}: {e}") from e
        outcomes = []
        with open_context(settings, command="invoke") as ctx:
            for event in parsed.events:
                if isinstance(event, DirectoryCreated):
                    summary = run_plan(
                        plan([event.path], scan_rules(settings), ctx), ctx, workers=settings.workers
                    )
                    outcomes.append({"event": repr(event), "summary": summary.as_dict()})
                else:
                    outcomes.append({"event": repr(event), "outcome": dispatch(event, ctx).value})
        result = {"accepted": len(parsed.events), "ignored": parsed.ignored, "outcomes": outcomes}
    if args.json:
        print(json.dumps(result))
    else:
        for line in result.get("outcomes", []):
            print(f"{line.get('outcome', 'scanned')}: {line['event']}")
        print(f"{result['accepted']} event(s) accepted, {len(result['ignored'])} ignored (not images)")
    return EXIT_OK
