"""``imgwatch migrate``: move the index between Milvus Lite and a Milvus server (:mod:`imgwatch.migrate`)."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from imgwatch.commands.exits import EXIT_OK
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings
    from imgwatch.ipc import DaemonClient


def add_migrate(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="move the index to a Milvus server (or back to Milvus Lite) without re-extracting",
        description="Copy the index's vectors, as they are, from the store it is in to another one: "
        "a Milvus server or cluster (--to http://host:19530), or back to the data dir's Milvus Lite "
        "file (--to lite). Resumable: run it again after an interruption and it goes on where it "
        "stopped. Verified by counts and sampled vectors; only then does the data dir use the new "
        "store (it remembers it: no setting needs changing). The old copy is left as it was. With a "
        "daemon running, the daemon copies while it keeps serving: searches answer from the old store "
        "and every change made meanwhile reaches the new one.",
    )
    migrate.add_argument("--to", required=True, metavar="URI", help="a Milvus server URI, or 'lite'")
    migrate.add_argument(
        "--token",
        default=None,
        help="user:password or an API key for the target server (default: milvus_token / "
        "IMGWATCH_MILVUS_TOKEN); later runs take it from those settings",
    )
    migrate.add_argument(
        "--batch-size", type=int, default=None, help="vectors copied per batch (default 500)"
    )
    migrate.add_argument(
        "--pause",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long between batches, leaving a busy daemon's handlers more room (default 0)",
    )
    migrate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    migrate.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.commands.daemon_client import running_daemon

    to = args.to
    if args.batch_size is not None and args.batch_size < 1:
        raise ImgwatchError("--batch-size must be at least 1")
    if args.pause < 0:
        raise ImgwatchError("--pause must not be negative")
    # A thin client when a daemon runs: imgwatch.migrate (SQLAlchemy, the services) only without one.
    daemon = running_daemon(settings)
    if daemon is not None:
        result, target_uri = _through_daemon(daemon, args)
    else:
        result, target_uri = _here(args, settings)
    token_setting = settings.milvus_token
    if args.json:
        print(json.dumps(result))
    else:
        resumed = f", resumed after id {result['resumed_after']}" if result["resumed_after"] else ""
        print(
            f"moved {result['total']} vectors to {target_uri} (collection {result['collection']}; "
            f"{result['copied']} written by this run{resumed}; {result['verified_sample']} compared with "
            f"the source) in {result['seconds']} s"
        )
        print(f"this data dir now uses {target_uri}; the old copy in {result['source']} is left as it was")
    for path in result["missing_in_source"]:
        print(
            f"imgwatch: {path}: its vector was missing from the source (`imgwatch reindex` repairs it)",
            file=sys.stderr,
        )
    if to != "lite" and args.token is not None and token_setting != args.token:
        print(
            "imgwatch: set milvus_token (or IMGWATCH_MILVUS_TOKEN) to this token for later runs",
            file=sys.stderr,
        )
    return EXIT_OK


class _Progress:
    """``N of M files`` on stderr, every 2 s and at the end."""

    def __init__(self) -> None:
        self._last = 0.0
        self._shown: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        if (done, total) != self._shown and (time.monotonic() - self._last >= 2 or done == total):
            self._last, self._shown = time.monotonic(), (done, total)
            print(f"  {done} of {total} files", file=sys.stderr)


def _here(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, Any], str]:
    """The copy in this process (no daemon runs): ``(result, target uri)``."""
    from imgwatch.migrate import BATCH, LITE, Stores, check_target, migrate, resolve_target, target_store_args
    from imgwatch.services.build import open_services
    from imgwatch.services.vectors import MilvusVectorStore

    to = args.to
    check_target(to)  # before the data dir is locked
    with open_services(settings, command="migrate", model=False) as services:
        source = services.serving.current.vectors
        here = services.settings
        target_uri = resolve_target(to, here)
        token = None if to == LITE else (args.token if args.token is not None else here.milvus_token)
        print(f"copying the index from {here.vectors_uri} to {target_uri}", file=sys.stderr)
        target = MilvusVectorStore(target_uri, token=token, **target_store_args(services.catalog, here))
        try:
            result = migrate(
                services.catalog,
                Stores(source, here.vectors_uri, target, to),
                batch=args.batch_size or BATCH,
                progress=_Progress(),
                pause=args.pause,
            )
        finally:
            target.close()
    return result.as_dict(), target_uri


def _through_daemon(daemon: DaemonClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The daemon copies while it serves; this follows its progress in ``status``."""
    from imgwatch.ipc import DaemonUnavailableError

    body = {"to": args.to, "token": args.token, "pause": args.pause}
    if args.batch_size is not None:
        body["batch"] = args.batch_size
    try:
        started = daemon.request("POST", "/migrate", body)
    except DaemonUnavailableError as e:
        if e.status == 400:  # refused: the reason, as without a daemon
            raise ImgwatchError(str(e).split(": ", 1)[-1]) from None
        raise
    print(
        f"copying the index from {started['source']} to {started['target']} (by the daemon)", file=sys.stderr
    )
    progress = _Progress()
    while True:
        try:
            state = daemon.status().get("migration") or {}
        except DaemonUnavailableError as e:
            raise ImgwatchError(
                f"the daemon stopped during the copy ({e}); `imgwatch migrate --to {args.to}` "
                "resumes it (with or without a daemon)"
            ) from None
        if state.get("id") != started["id"]:
            raise ImgwatchError("the daemon lost track of the copy; run migrate again to resume it")
        if state.get("total") is not None:
            progress(state["done"], state["total"])
        if state["phase"] == "done":
            return dict(state["result"]), str(started["target"])
        if state["phase"] == "failed":
            raise ImgwatchError(str(state["error"]))
        time.sleep(0.2)
