"""The `search` command, with its output formats (`duplicates`, in commands/duplicates.py, shares the
page writer)."""

# ruff: noqa: T201 - a CLI module: printing the outcome is its job (see imgwatch.commands)

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgwatch.commands.daemon_client import running_daemon
from imgwatch.commands.exits import EXIT_OK, EXIT_QUERY_FAILED
from imgwatch.commands.options import full_settings, html_options
from imgwatch.errors import ImgwatchError
from imgwatch.names import DUPLICATE_THRESHOLD

if TYPE_CHECKING:
    from imgwatch.commands.options import Subcommands
    from imgwatch.config import Settings
    from imgwatch.config.client import ClientSettings
    from imgwatch.search import QueryResult, SearchFilter

#: The cosine similarity from which ``duplicates`` calls two images look-alikes (`check` and its tests
#: import it from here).
DEFAULT_THRESHOLD = DUPLICATE_THRESHOLD


def add_search(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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
        "--flip",
        action="store_true",
        help="also search with the query's mirror image (left to right): each result scores the better "
        "of the two, so mirrored copies rank as unmirrored ones do (a second model run per query)",
    )
    search.add_argument(
        "--crops",
        action="store_true",
        help="also search with the query's centre and four corners at 80%% of each side: each result "
        "scores the best of the six views, so cropped copies rank nearer where whole ones do (6 model "
        "runs per query instead of 1, 12 with --flip; measured at 3-4.5x the time of a plain query)",
    )
    search.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="DIR",
        help="only results inside DIR (repeatable: inside any of them)",
    )
    search.add_argument(
        "--since",
        metavar="WHEN",
        help="only results modified at or after WHEN: an ISO date or date-time (2024-06-01, "
        "2024-06-01T14:30; local time unless it has an offset)",
    )
    search.add_argument(
        "--until",
        metavar="WHEN",
        help="only results modified before WHEN (same forms as --since; --until 2024-09-01 stops at the "
        "end of August 31)",
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
    html_options(search, "the results: query images on top, then thumbnails with scores and paths")
    search.set_defaults(run=run_search, thin=True)


def run_search(args: argparse.Namespace, settings: Settings | ClientSettings) -> int:
    # The service builders (SQLAlchemy, pymilvus, and torch for a query image) only where no daemon
    # answers: with one, this command is a thin client of its socket.
    from imgwatch.search import QueryResult, SearchFilter, read_queries
    from imgwatch.services.files import LocalFileReader

    if args.k < 1:
        raise ImgwatchError("-k must be at least 1")
    if args.flip and args.like:
        raise ImgwatchError("--flip needs query images: --like searches with stored vectors")
    if args.crops and args.like:
        raise ImgwatchError("--crops needs query images: --like searches with stored vectors")
    where = SearchFilter.parse(args.under, args.since, args.until)
    if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
        raise ImgwatchError("--min-score must be between -1 and 1 (a cosine similarity)")
    if args.open and args.html is None:
        raise ImgwatchError("--open opens the page that --html writes: give --html OUT.html too")
    files = LocalFileReader(settings.max_file_bytes)
    queries: list[tuple[str, bytes | str]] = []
    daemon = running_daemon(settings)
    if args.like:
        # The daemon's working directory is not ours: send absolute paths, report them as given.
        absolute = [os.path.abspath(q) for q in args.queries]
        if daemon is not None:
            raw = daemon.search_like(absolute, args.k, where=where)
            results = [_query_result(r, query) for r, query in zip(raw, args.queries, strict=True)]
        else:
            with _no_cycle_collection():
                from imgwatch.search import search_like
                from imgwatch.services.build import open_context

                with open_context(full_settings(settings), command="search", model=False) as ctx:
                    results = search_like(absolute, ctx, k=args.k, where=where)
            results = [QueryResult(q, r.matches, r.error) for r, q in zip(results, args.queries, strict=True)]
    else:
        queries = read_queries(list(args.queries), files)
        if daemon is not None:
            raw = daemon.search(queries, args.k, flip=args.flip, crops=args.crops, where=where)
            results = [_query_result(r, r["query"]) for r in raw]
        else:
            results = _search_here(queries, args, settings, where)
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
        write_page(args.html, search_page(results, lambda path: files.read(path).data, given), args.open)
    failed = [r for r in results if r.error]
    for result in failed:
        print(f"imgwatch: cannot search with {result.query}: {result.error}", file=sys.stderr)
    return EXIT_QUERY_FAILED if failed else EXIT_OK


def _search_here(
    queries: list[tuple[str, bytes | str]],
    args: argparse.Namespace,
    settings: Settings | ClientSettings,
    where: SearchFilter,
) -> list[QueryResult]:
    """Search with query images in this process (no daemon answers): the model's imports in a thread
    of their own (:class:`ModelImport`) while this one opens the catalog and the store."""
    with _no_cycle_collection():
        importing = ModelImport() if any(isinstance(data, bytes) for _, data in queries) else None
        from imgwatch.search import search_images
        from imgwatch.services.build import open_context

        full = full_settings(settings)
        if importing is not None:
            importing.numpy_imported.wait()  # the store imports numpy: see ModelImport
        with open_context(full, command="search") as ctx:
            results = search_images(queries, ctx, k=args.k, flip=args.flip, crops=args.crops, where=where)
        if importing is not None:
            importing.thread.join()  # long done: the model's load needed the same modules
    return results


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """No garbage-cycle collection while a command without a daemon starts up and searches.

    Importing torch, torchvision, SQLAlchemy, pydantic and pymilvus makes hundreds of thousands of
    objects that live until the process ends, and each of the collector's full passes meanwhile walks
    them all, finding next to nothing: measured on 2 cores, ~0.7 s of CPU in importing torch and
    torchvision alone (docs/notes-cold-search.md). Reference counting frees everything else as usual
    (mypy raises its thresholds for the same reason).

    Afterwards everything made meanwhile is moved to the oldest generation unwalked (``freeze`` then
    ``unfreeze``): left in the youngest, the first allocation after ``enable`` would walk it all at
    once (0.9 s measured). A caller that had the collector off, or objects frozen, is left as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


class ModelImport:
    """Imports torch and the model's code in a thread of its own, started at once, while the command's
    own thread loads the settings and opens the catalog and the vector store (SQLAlchemy, pymilvus,
    Milvus Lite's start).

    Most of both is Python holding the GIL, but not all (torch loading its shared libraries, Milvus
    Lite's gRPC threads): on a machine with a core to spare the two overlap (measured in
    docs/notes-cold-search.md). Only the imports: which model to build is the catalog's to say, and
    the search builds it as before. Not a daemon thread: an error that ends the command early waits
    for the import to finish rather than stop a thread inside torch's initialisation at exit.
    """

    def __init__(self) -> None:
        self.numpy_imported = threading.Event()
        """Set once the import thread is done with numpy. Both threads need numpy, and Python 3.11 can
        fail one of two threads that import parts of one package at once (its "deadlock detected"):
        the command's thread waits for this before anything of its own imports numpy."""
        self.thread = threading.Thread(target=self._run, name="imgwatch-model-import")
        self.thread.start()

    def _run(self) -> None:
        # A failure is not reported here: the model's own load imports it again, and reports it.
        try:
            with contextlib.suppress(Exception):
                import numpy  # noqa: F401 - imported to be loaded, nothing more
        finally:
            self.numpy_imported.set()
        with contextlib.suppress(Exception):
            import imgwatch.services.extractor  # noqa: F401


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


def write_page(path: Path, page: str, open_it: bool) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise ImgwatchError(f"cannot write {path}: {e.strerror or e}") from e
    print(f"imgwatch: wrote {path}", file=sys.stderr)
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"imgwatch: no web browser found; open {path} yourself", file=sys.stderr)
