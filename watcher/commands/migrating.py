"""``imgwatch migrate``: move the index between Milvus Lite and a Milvus server (:mod:`imgwatch.migrate`)."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from imgwatch.commands.exits import EXIT_OK
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings

_SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")


def add_migrate(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="move the index to a Milvus server (or back to Milvus Lite) without re-extracting",
        description="Copy the index's vectors, as they are, from the store it is in to another one: "
        "a Milvus server or cluster (--to http://host:19530), or back to the data dir's Milvus Lite "
        "file (--to lite). Resumable: run it again after an interruption and it goes on where it "
        "stopped. Verified by counts and sampled vectors; only then does the data dir use the new "
        "store (it remembers it: no setting needs changing). The old copy is left as it was. Stop "
        "the daemon first.",
    )
    migrate.add_argument("--to", required=True, metavar="URI", help="a Milvus server URI, or 'lite'")
    migrate.add_argument(
        "--token",
        default=None,
        help="user:password or an API key for the target server (default: milvus_token / "
        "IMGWATCH_MILVUS_TOKEN); later runs take it from those settings",
    )
    migrate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    migrate.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.migrate import LITE, Stores, migrate, target_store_args
    from imgwatch.services.build import open_services
    from imgwatch.services.vectors import MilvusVectorStore

    to = args.to
    if to != LITE and not to.startswith(_SERVER_SCHEMES):
        raise ImgwatchError(f"--to {to!r}: give a Milvus server URI (http://host:19530) or 'lite'")
    with open_services(settings, command="migrate", model=False) as services:
        source = services.serving.current.vectors
        here = services.settings
        target_uri = str(here.data_dir / "vectors.db") if to == LITE else to
        if (to == LITE and here.uses_milvus_lite) or target_uri == here.vectors_uri:
            raise ImgwatchError(f"the index is in {here.vectors_uri} already")
        token = None if to == LITE else (args.token if args.token is not None else here.milvus_token)
        print(f"copying the index from {here.vectors_uri} to {target_uri}", file=sys.stderr)
        target = MilvusVectorStore(target_uri, token=token, **target_store_args(services.catalog, here))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= 2 or done == total:
                last[0] = time.monotonic()
                print(f"  {done} of {total} files", file=sys.stderr)

        try:
            result = migrate(
                services.catalog, Stores(source, here.vectors_uri, target, to), progress=progress
            )
        finally:
            target.close()
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        resumed = f", resumed after id {result.resumed_after}" if result.resumed_after else ""
        print(
            f"moved {result.total} vectors to {target_uri} (collection {result.collection}; "
            f"{result.copied} written by this run{resumed}; {result.verified_sample} compared with the "
            f"source) in {result.seconds} s"
        )
        print(f"this data dir now uses {target_uri}; the old copy in {result.source} is left as it was")
    for path in result.missing_in_source:
        print(
            f"imgwatch: {path}: its vector was missing from the source (`imgwatch reindex` repairs it)",
            file=sys.stderr,
        )
    if to != LITE and args.token is not None and here.milvus_token != args.token:
        print(
            "imgwatch: set milvus_token (or IMGWATCH_MILVUS_TOKEN) to this token for later runs",
            file=sys.stderr,
        )
    return EXIT_OK
