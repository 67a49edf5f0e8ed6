"""The ``imgwatch`` command line. The only place that prints, and that picks exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgwatch import __version__
from imgwatch.config import (
    DEVICES,
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_MILVUS_URI,
    ENV_PCA,
    ENV_SEARCH_PAGE,
    ENV_WEIGHTS,
    Settings,
    load_settings,
)
from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.ipc import DaemonClient
    from imgwatch.scan import ScanRules
    from imgwatch.search import QueryResult
    from imgwatch.services.build import Services

log = logging.getLogger("imgwatch")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_QUERY_FAILED = 3


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flag > environment > config file > default)")
    group.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the catalog and the Milvus Lite file live (env {ENV_DATA_DIR}; "
        "default: the XDG data dir, ~/.local/share/imgwatch)",
    )
    group.add_argument(
        "--weights",
        default=None,
        help="VGG16 weights: 'imagenet' (default, torchvision's download cache), a path to a "
        f"state-dict file, or 'random:SEED' for tests/offline demos (env {ENV_WEIGHTS})",
    )
    group.add_argument(
        "--milvus-uri",
        default=None,
        help="a Milvus server, e.g. http://localhost:19530 (env "
        f"{ENV_MILVUS_URI}; token in IMGWATCH_MILVUS_TOKEN); default: Milvus Lite in the "
        "data dir",
    )
    group.add_argument("--device", choices=DEVICES, default=None, help="where the model runs (default: auto)")
    group.add_argument(
        "--pca",
        metavar="DIM",
        default=None,
        help="store PCA-projected vectors of DIM dimensions (256 or 512; 'off' for the full 4096), fitted "
        f"on the indexed vectors; a change reindexes in the background (env {ENV_PCA})",
    )
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML config file (env {ENV_CONFIG}; default: ~/.config/imgwatch/config.toml)",
    )
    group.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info for watch, warning otherwise)",
    )
    return common


def _html_options(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="OUT.html",
        help=f"also write a self-contained HTML page of {what}",
    )
    command.add_argument("--open", action="store_true", help="open the --html page in a web browser")


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="imgwatch",
        description="Reverse image search over your folders: VGG16 features kept in Milvus.",
    )
    parser.add_argument("--version", action="version", version=f"imgwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    search = commands.add_parser(
        "search",
        parents=[common],
        help="find the indexed images most similar to image files",
        description="Find the indexed images most similar to each QUERY image, best first. The model "
        "loads once for all queries.",
    )
    search.add_argument(
        "queries", nargs="+", metavar="QUERY", help="an image file (with --like: an indexed file)"
    )
    search.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    search.add_argument(
        "--like",
        action="store_true",
        help="more like this: each QUERY is an indexed file and its stored vector is the query (no "
        "model run; the file need not be readable any more); it is left out of its own results",
    )
    search.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="S",
        help="only results with a cosine similarity of at least S (-1..1)",
    )
    output = search.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per query and line: {"query": ..., "results": [{"path", "score"}]}',
    )
    output.add_argument(
        "-f",
        "--paths-only",
        action="store_true",
        help="print only the result paths, one per line, as their exact bytes (for xargs and friends)",
    )
    output.add_argument(
        "-0",
        "--null",
        action="store_true",
        help="like -f, but end each path with a NUL byte instead of a newline (for xargs -0): "
        "safe for any file name",
    )
    _html_options(search, "the results: query images on top, then thumbnails with scores and paths")

    duplicates = commands.add_parser(
        "duplicates",
        parents=[common],
        help="find groups of near-duplicate images in the index",
        description="Group the indexed images whose vectors are at least THRESHOLD similar (cosine): "
        "resized, re-encoded or lightly edited copies. Groups are closed under similarity (a~b and "
        "b~c puts a, b and c together) and listed largest first. Streams over the vector store "
        "without loading the model; goes through the daemon when one runs.",
    )
    duplicates.add_argument(
        "--threshold",
        type=float,
        default=0.95,
        help="the cosine similarity from which two images count as duplicates (default 0.95)",
    )
    duplicates.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"groups": [{"paths": [...], "max_score": ...}]}',
    )
    _html_options(duplicates, "the groups, with thumbnails")

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

    compact_cmd = commands.add_parser(
        "compact",
        parents=[common],
        help="reclaim space: Milvus compaction, journal pruning, SQLite upkeep",
        description="Run the compaction job now (the daemon also runs it nightly): flush and compact "
        "the Milvus collection, prune old journal rows, checkpoint and (when worth it) VACUUM the "
        "catalog. Goes through the daemon when one runs.",
    )
    compact_cmd.add_argument("--json", action="store_true", help="print the job's report as JSON")
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

    status = commands.add_parser(
        "status",
        parents=[common],
        help="what is indexed, what failed and why, where the data lives",
        description="Report file counts by state, vectors in Milvus, the index's extractor, the data dir, "
        "and whether a daemon serves it.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--failed", action="store_true", help="list failed files with their errors")
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level == "info":
        # At info, one line per event worth logging: our own, not the libraries' start-up chatter.
        # uvicorn.error says "started" once per surface; its access log (uvicorn.access) stays on.
        for chatty in ("watchdog", "alembic", "faiss", "PIL", "urllib3", "uvicorn.error", "httpx"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    if level != "debug":
        # pymilvus logs every failed RPC with a traceback before raising, and Milvus Lite's in-process
        # gRPC server logs the optional RPCs it does not implement; we report the errors that matter.
        _quiet_libraries()


def _quiet_libraries() -> None:
    for noisy in ("pymilvus", "grpc._server", "milvus_lite"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


#: The flag of each setting a command line can give (its argparse dest is the setting's name), so
#: that a bad value is reported as the flag's. Commands without a flag leave it None: not given.
_SETTING_FLAGS = {
    "data_dir": "--data-dir",
    "weights": "--weights",
    "milvus_uri": "--milvus-uri",
    "device": "--device",
    "pca": "--pca",
    "batch_size": "--batch-size",
    "poll": "--poll",
    "poll_interval": "--poll-interval",
    "webhook": "--webhook",
    "search_page": "--search-page",
    "config_file": "--config",
}


def _settings(args: argparse.Namespace) -> Settings:
    explicit = {name: getattr(args, name, None) for name in _SETTING_FLAGS if name != "config_file"}
    return load_settings(explicit, config_file=args.config, flags=_SETTING_FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    # Non-UTF-8 file names travel as surrogate escapes; print them back as the original bytes.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level or ("info" if args.command == "watch" else "warning"))
    try:
        settings = _settings(args)
        handler = {
            "index": _index,
            "search": _search,
            "duplicates": _duplicates,
            "status": _status,
            "watch": _watch,
            "invoke": _invoke,
            "compact": _job,
            "reindex": _job,
            "forget": _forget,
        }[args.command]
        return handler(args, settings)
    except ImgwatchError as e:
        print(f"imgwatch: error: {e}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("imgwatch: interrupted", file=sys.stderr)
        return 130


def _index(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgwatch.indexer import normalise_root, plan, run_plan
    from imgwatch.services.build import open_services

    roots = [normalise_root(root) for root in args.roots]
    daemon = _running_daemon(settings)
    if daemon is not None and args.rebuild:
        raise ImgwatchError("stop the daemon (imgwatch watch) before `index --rebuild`")
    if daemon is not None:
        result = daemon.index(roots)
    else:
        with open_services(settings, command="index", rebuild=args.rebuild) as services:
            ctx = services.ctx
            work = plan(roots, _rules(settings), ctx)
            ctx.catalog.remember_roots(roots, "index")
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
                    workers=settings.batch_size + 4,
                    on_handled=lambda _event, _outcome: bar.update(),
                )
            result = summary.as_dict()
            result["reindex"] = _reindex_now(services)
    for failure in result["failures"]:
        print(f"imgwatch: failed: {failure['path']}: {failure['error']}", file=sys.stderr)
    for skipped in result["skipped"]:
        print(f"imgwatch: skipped: {skipped['path']}: {skipped['error']} (left as it was)", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        shown = ("failures", "skipped", "reindex", "seconds")
        counts = ", ".join(f"{n} {name}" for name, n in result.items() if name not in shown)
        print(f"{counts} in {result['seconds']:.1f} s ({', '.join(roots)})")
    return EXIT_OK


def _reindex_now(services: Services) -> dict[str, int] | None:
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


def _rules(settings: Settings) -> ScanRules:
    from imgwatch.scan import ScanRules

    return ScanRules(settings.include, settings.exclude, settings.include_hidden, settings.follow_symlinks)


def _running_daemon(settings: Settings, wait: float = 120.0) -> DaemonClient | None:
    """A client for the daemon serving this data dir, or None when no daemon runs.

    A daemon that holds the data dir but does not answer yet is starting (loading the model):
    wait for it rather than fail on the lock.
    """
    from imgwatch.ipc import DaemonClient, DaemonUnavailableError
    from imgwatch.lock import lock_holder

    deadline = time.monotonic() + wait
    while True:
        holder = lock_holder(settings.data_dir)
        if holder is None or holder.command != "watch":
            return None
        client = DaemonClient(settings.data_dir)
        try:
            client.status()
        except DaemonUnavailableError:
            if time.monotonic() > deadline:
                raise ImgwatchError(
                    f"the daemon (PID {holder.pid}) holds {settings.data_dir} but does not answer "
                    "on its socket"
                ) from None
            time.sleep(0.2)
            continue
        return client


def _invoke(args: argparse.Namespace, settings: Settings) -> int:
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
    daemon = _running_daemon(settings)
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
                        plan([event.path], _rules(settings), ctx), ctx, workers=settings.batch_size + 4
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


def _job(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch import jobs
    from imgwatch.indexer import normalise_root
    from imgwatch.services.build import open_services

    name = "compact" if args.command == "compact" else "reconcile"
    daemon = _running_daemon(settings)
    if daemon is not None:
        report = daemon.request("POST", f"/jobs/{name}")
    else:
        roots: list[str] = []
        if name == "reconcile":  # before the model loads: a missing root fails at once
            given = args.roots or settings.roots or _remembered(settings, "reindex")
            roots = [normalise_root(root) for root in given]
        with open_services(settings, command=args.command) as services:
            ctx = services.ctx
            if name == "compact":
                report = jobs.run_recorded(name, lambda: jobs.compact(ctx), ctx)
            else:
                workers = settings.batch_size + 4
                report = jobs.run_recorded(
                    name, lambda: jobs.reconcile(ctx, roots, _rules(settings), workers=workers), ctx
                )
                if report["outcome"] == "ok":
                    report["reindex"] = _reindex_now(services)
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


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.daemon import Daemon
    from imgwatch.services.build import open_services

    given = args.roots or settings.roots or _remembered(settings, "watch")
    roots = [os.path.abspath(os.fsdecode(root)) for root in given]
    from imgwatch.sources.webhook import is_loopback, parse_bind

    for bind, option in ((settings.webhook, "--webhook"), (settings.search_page, "--search-page")):
        if bind:
            host, _ = parse_bind(bind, option)
            if settings.webhook_token is None and not is_loopback(host):
                raise ImgwatchError(
                    f"refusing to listen on {host} ({option}) without a token: set IMGWATCH_WEBHOOK_TOKEN"
                )
    with open_services(settings, command="watch") as services:
        services.catalog.remember_roots(roots, "watch")
        daemon = Daemon(services, roots, _rules(settings))
        code = daemon.run()
        if daemon.unfinished_threads:
            # Past the shutdown bound: closing the stores under running handlers could corrupt
            # them; leaving now cannot (their work stays in the journal, as after a crash).
            logging.shutdown()
            os._exit(code)
        return code


def _remembered(settings: Settings, command: str) -> list[str]:
    """For ``command`` run without roots: the ones the index remembers, said on stderr (a missing
    one too: it is still passed on, so its entries are kept, not deleted)."""
    from imgwatch.roots import remembered_roots

    roots = [root.path for root in remembered_roots(settings)]
    if not roots:
        raise ImgwatchError(
            f"{command}: no roots: give ROOT arguments, set `roots = [...]` in the config file, or index "
            "a folder first (`imgwatch index ROOT`; the index then remembers it)"
        )
    missing = [root for root in roots if not os.path.isdir(root)]
    shown = ", ".join(f"{root} (missing)" if root in missing else root for root in roots)
    print(f"imgwatch: using the roots this index remembers: {shown}", file=sys.stderr)
    for root in missing:
        print(
            f"imgwatch: warning: the remembered root {root} does not exist; its entries are kept "
            f"(`imgwatch forget {root}` removes them)",
            file=sys.stderr,
        )
    return roots


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.ipc import DaemonClient, DaemonUnavailableError
    from imgwatch.roots import forget_root, remembered_roots
    from imgwatch.services.build import open_context

    root = os.path.abspath(os.fsdecode(args.root))
    if _running_daemon(settings) is not None:
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
        if other != root and (_is_under(root, other) or _is_under(other, root)):
            print(
                f"imgwatch: warning: {other} is still a root and overlaps {root}: "
                "`imgwatch reindex` and `watch` will index what lies in both again",
                file=sys.stderr,
            )
    return EXIT_OK


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _search(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.search import QueryResult, read_queries, search_images, search_like
    from imgwatch.services.build import open_context
    from imgwatch.services.files import LocalFileReader

    if args.k < 1:
        raise ImgwatchError("-k must be at least 1")
    if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
        raise ImgwatchError("--min-score must be between -1 and 1 (a cosine similarity)")
    if args.open and args.html is None:
        raise ImgwatchError("--open opens the page that --html writes: give --html OUT.html too")
    files = LocalFileReader(settings.max_file_bytes)
    queries: list[tuple[str, bytes | str]] = []
    daemon = _running_daemon(settings)
    if args.like:
        # The daemon's working directory is not ours: send absolute paths, report them as given.
        absolute = [os.path.abspath(q) for q in args.queries]
        if daemon is not None:
            raw = daemon.search_like(absolute, args.k)
            results = [_query_result(r, query) for r, query in zip(raw, args.queries, strict=True)]
        else:
            with open_context(settings, command="search", model=False) as ctx:
                results = search_like(absolute, ctx, k=args.k)
            results = [QueryResult(q, r.matches, r.error) for r, q in zip(results, args.queries, strict=True)]
    else:
        queries = read_queries(list(args.queries), files)
        if daemon is not None:
            results = [_query_result(r, r["query"]) for r in daemon.search(queries, args.k)]
        else:
            with open_context(settings, command="search") as ctx:
                results = search_images(queries, ctx, k=args.k)
    if args.min_score is not None:
        floor = args.min_score
        results = [QueryResult(r.query, [m for m in r.matches if m.score >= floor], r.error) for r in results]
    if args.paths_only or args.null:
        _print_paths([m.path for r in results for m in r.matches], b"\0" if args.null else b"\n")
    else:
        _print_results(results, as_json=args.json)
    if args.html is not None:
        from imgwatch.report import search_page

        given = {name: data for name, data in queries if isinstance(data, bytes)}
        _write_page(args.html, search_page(results, lambda path: files.read(path).data, given), args.open)
    failed = [r for r in results if r.error]
    for result in failed:
        print(f"imgwatch: cannot search with {result.query}: {result.error}", file=sys.stderr)
    return EXIT_QUERY_FAILED if failed else EXIT_OK


def _query_result(raw: dict[str, Any], query: str) -> QueryResult:
    from imgwatch.search import Match, QueryResult

    matches = [Match(m["path"], m["score"], m.get("node")) for m in raw["results"]]
    return QueryResult(query, matches, raw.get("error"))


def _print_paths(paths: list[str], end: bytes) -> None:
    """Each path as its exact bytes (a non-UTF-8 name stays the name xargs must pass on)."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    for path in paths:
        out.write(os.fsencode(path) + end)
    out.flush()


def _print_results(results: list[QueryResult], *, as_json: bool) -> None:
    for result in results:
        if as_json:
            line: dict[str, Any] = {
                "query": result.query,
                "results": [m.as_dict() for m in result.matches],
            }
            if result.error:
                line["error"] = result.error
            print(json.dumps(line), flush=True)
            continue
        print(f"{result.query}:")
        if result.error:
            print(f"  error: {result.error}")
        elif not result.matches:
            print("  (no matches)")
        for rank, match in enumerate(result.matches, 1):
            where = f"[{match.node}] " if match.node is not None else ""
            print(f"  {rank:>3}  {match.score:6.4f}  {where}{match.path}")


def _write_page(path: Path, page: str, open_it: bool) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise ImgwatchError(f"cannot write {path}: {e.strerror or e}") from e
    print(f"imgwatch: wrote {path}", file=sys.stderr)
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"imgwatch: no web browser found; open {path} yourself", file=sys.stderr)


def _duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.duplicates import DuplicateGroup, find_duplicates
    from imgwatch.services.build import open_context
    from imgwatch.services.files import LocalFileReader

    if not 0.0 < args.threshold <= 1.0:
        raise ImgwatchError("--threshold must be above 0 and at most 1 (a cosine similarity)")
    if args.open and args.html is None:
        raise ImgwatchError("--open opens the page that --html writes: give --html OUT.html too")
    daemon = _running_daemon(settings)
    if daemon is not None:
        reply = daemon.duplicates(args.threshold)
        groups = [DuplicateGroup(list(g["paths"]), float(g["max_score"])) for g in reply["groups"]]
    else:
        with open_context(settings, command="duplicates", model=False) as ctx:
            if args.log_level != "debug":
                # Importing pymilvus (in open_context) re-applied its own logging config; without
                # this, every query_iterator on Milvus Lite warns "failed to get mvccTs" (harmless).
                _quiet_libraries()
            groups = find_duplicates(ctx, threshold=args.threshold)
    if args.json:
        print(json.dumps({"groups": [{"paths": g.paths, "max_score": g.max_score} for g in groups]}))
    else:
        for number, group in enumerate(groups, 1):
            print(f"group {number}: {len(group.paths)} files, best pair {group.max_score:.4f}")
            for path in group.paths:
                print(f"  {path}")
        if not groups:
            print(f"no near-duplicates (threshold {args.threshold:g})")
    if args.html is not None:
        from imgwatch.report import duplicates_page

        files = LocalFileReader(settings.max_file_bytes)
        page = duplicates_page(groups, lambda path: files.read(path).data, args.threshold)
        _write_page(args.html, page, args.open)
    return EXIT_OK


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from imgwatch.status import gather_status

    report = gather_status(settings, include_failures=args.failed)
    if report["daemon"]["running"]:
        from imgwatch.ipc import DaemonClient, DaemonUnavailableError

        try:
            live = DaemonClient(settings.data_dir, timeout=10).status()
        except DaemonUnavailableError:
            report["daemon"]["state"] = "starting"
        else:
            report["vectors"] = live.pop("vectors")
            report["daemon"].update(live, state="running")
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
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
    if daemon.get("webhook"):
        lines.append(f"webhook:    {daemon['webhook']}")
    if daemon.get("search_page"):
        lines.append(f"search:     {daemon['search_page']}")
    for name, job in (daemon.get("jobs") or report["jobs"]).items():
        run = job.get("last_run")
        last = f"last {run['started_at']}: {run['outcome']} in {run['duration_s']} s" if run else "never run"
        upcoming = f", next {job['next_run']}" if job.get("next_run") else ""
        lines.append(f"job {name + ':':<7} {last}{upcoming}")
    print("\n".join(lines))
    if args.failed:
        for failure in report["failed_files"]:
            print(f"  failed: {failure['path']}: {failure['error']}")
    elif files["failed"]:
        print(f"({files['failed']} failed files: `imgwatch status --failed` lists them with reasons)")
    return EXIT_OK
