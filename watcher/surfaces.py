"""The daemon's HTTP surfaces, built from its parts and started on their sockets.

The daemon hands over what each surface needs (its serving context, ``submit``, its status and
index operations); this module turns settings into bound sockets, builds each app with
:func:`imgwatch.web.create_app` and serves it with uvicorn (:class:`imgwatch.web.server.HttpServer`).
Everything HTTP stays in :mod:`imgwatch.web`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgwatch.check import check_reply, serving_check, serving_check_cropped
from imgwatch.config import Settings
from imgwatch.duplicates import find_duplicates, find_exact_duplicates
from imgwatch.events import ImageEvent, Source
from imgwatch.ipc import socket_path
from imgwatch.search import QueryResult, SearchFilter, search_images, search_like
from imgwatch.serving import Serving
from imgwatch.sources.webhook import AllowedPaths, is_loopback, parse_bind, parse_body
from imgwatch.verdicts import list_verdicts, mark_distinct, withdraw_verdict
from imgwatch.web import create_app
from imgwatch.web.local import LocalSurface, VerdictCalls
from imgwatch.web.page import PageSurface, SearchPageBackend, SearchPageConfig
from imgwatch.web.page_token import page_token
from imgwatch.web.server import HttpServer, bind_tcp, bind_unix
from imgwatch.web.webhook import WebhookConfig, WebhookSurface

log = logging.getLogger(__name__)

Reply = dict[str, Any]


@dataclass(frozen=True)
class DaemonParts:
    """What the surfaces reach in the daemon."""

    settings: Settings
    serving: Serving
    allowed: AllowedPaths
    roots: list[str]
    """The watched roots and S3 mount directories: thumbnails are only of files inside them."""
    submit: Callable[[ImageEvent], None]
    health: Callable[[], tuple[int, Reply]]
    metrics: Callable[[], tuple[bytes, str]]
    count_webhook_request: Callable[[str, int], None]
    status: Callable[[], Reply]
    index: Callable[[list[str]], Reply]
    run_job: Callable[[str], Reply]
    forget_root: Callable[[str], Reply]


def start_webhook(parts: DaemonParts) -> HttpServer:
    settings = parts.settings
    assert settings.webhook is not None
    host, port = parse_bind(settings.webhook)
    config = WebhookConfig(
        host=host,
        port=port,
        token=settings.webhook_token,
        hmac_secret=settings.webhook_hmac_secret,
        max_bytes=settings.webhook_max_bytes,
        allowed=parts.allowed,
        metrics_public=settings.metrics_public,
    )
    if config.token is None:
        log.warning("the webhook on %s:%d accepts events without a token", host, port)
    app = create_app(
        webhook=WebhookSurface(
            config, parts.submit, parts.health, parts.metrics, check=serving_check(parts.serving)
        ),
        on_request=parts.count_webhook_request,
    )
    server = HttpServer(app, bind_tcp(host, port, "--webhook"), "imgwatch-webhook")
    server.start()
    log.info("webhook listening on http://%s:%d/events", _bracketed(host), server.port)
    return server


def start_search_page(parts: DaemonParts) -> tuple[HttpServer, str]:
    """The page's server and its URL (with the port actually bound)."""
    import random
    import threading
    from collections.abc import Hashable, Mapping, Sequence
    from typing import cast

    import numpy as np

    from imgwatch.duplicates import DuplicateGroup
    from imgwatch.thumbnails import Thumbnails
    from imgwatch.trash import LOG_NAME, Discarded, discard_keeping
    from imgwatch.web.review import CONFIRMED_META_KEY, MAX_CONFIRMED, NEIGHBOUR_SAMPLE, ReviewBackend
    from imgwatch.web.review_math import NeighbourScores

    settings = parts.settings
    assert settings.search_page is not None
    host, port = parse_bind(settings.search_page, "--search-page")
    token, own_token = settings.webhook_token, False
    if token is None and is_loopback(host):
        # The page can trash files: never open to every local user (imgwatch.web.page_token).
        token, own_token = page_token(settings.data_dir), True
    config = SearchPageConfig(host, port, token, settings.search_page_max_bytes)
    serving = parts.serving
    # Thumbnails only of files inside the roots and S3 mount directories: never of other folders
    # indexed into the same data dir by `imgwatch index`, nor of anything else on the disk.
    thumbnails = Thumbnails(lambda: serving.current.catalog, parts.roots, settings.max_file_bytes)

    def search_image(data: bytes, k: int, flip: bool = False, crops: bool = False) -> QueryResult:
        with serving.use() as ctx:
            return search_images([("upload", data)], ctx, k=k, flip=flip, crops=crops)[0]

    def search_like_path(path: str, k: int) -> QueryResult:
        with serving.use() as ctx:
            return search_like([path], ctx, k=k)[0]

    def path_of(file_id: int) -> str | None:
        record = serving.current.catalog.get_many([file_id]).get(file_id)
        return record.path if record else None

    # ---- the Duplicates view (imgwatch.web.review) ----
    confirmed_lock = threading.Lock()

    def groups(threshold: float, exact: bool) -> list[DuplicateGroup]:
        with serving.use() as ctx:
            if exact:
                return find_exact_duplicates(ctx.catalog)
            # Scratch space in the data dir: /tmp may be a tmpfs, in memory.
            return find_duplicates(ctx, threshold=threshold, scratch_dir=settings.data_dir)

    def neighbour_scores() -> NeighbourScores:
        """Each file's best score to another: a top-2 search (itself and its nearest neighbour) of
        a seeded uniform sample, so that a 100k library costs a few searches, not a whole pass."""
        with serving.use() as ctx:
            ids = [key for batch in ctx.catalog.iter_ids_with_vectors(5000) for key in batch]
            vouched = set(ids)
            sample = sorted(random.Random(0).sample(ids, min(len(ids), NEIGHBOUR_SAMPLE)))  # noqa: S311
            scores = []
            for start in range(0, len(sample), 256):
                stored = ctx.vectors.get_vectors(sample[start : start + 256])
                keys = [key for key in sample[start : start + 256] if key in stored]
                for key, hits in zip(keys, ctx.vectors.search([stored[k] for k in keys], 2), strict=True):
                    best = [hit.score for hit in hits if hit.id != key and hit.id in vouched]
                    if best:
                        scores.append(round(float(best[0]), 6))
            return NeighbourScores(scores, len(ids))

    def index_generation() -> Hashable:
        """Changes with every change of a file's row or a verdict (every write sets ``updated_at``;
        ids only grow) and with a reindex's switch of collection: two aggregate queries."""
        import sqlalchemy as sa

        from imgwatch.services.catalog import SQLiteCatalog
        from imgwatch.services.catalog_tables import FILES, VERDICTS

        ctx = serving.current
        files = sa.select(sa.func.count(), sa.func.max(FILES.c.id), sa.func.max(FILES.c.updated_at))
        verdicts = sa.select(sa.func.count(), sa.func.max(VERDICTS.c.created_at))
        with cast(SQLiteCatalog, ctx.catalog).engine.connect() as conn:
            marks = (tuple(conn.execute(files).one()), tuple(conn.execute(verdicts).one()))
        return (ctx.vectors.collection, marks)

    def pair_scores(pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        with serving.use() as ctx:
            records = {p: ctx.catalog.get(p) for pair in pairs for p in pair}
            ids = {p: r.id for p, r in records.items() if r is not None and r.has_vector}
            stored = ctx.vectors.get_vectors(ids.values())
        found: list[float | None] = []
        for a, b in pairs:
            va, vb = stored.get(ids.get(a, -1)), stored.get(ids.get(b, -1))
            cosine = (
                None if va is None or vb is None else np.dot(va, vb) / np.linalg.norm(va) / np.linalg.norm(vb)
            )
            found.append(None if cosine is None else round(float(cosine), 6))
        return found

    def verdict_pairs() -> list[tuple[str, str, float]]:
        # A verdict names contents; one whose content no file has now is named by its hash: unscored.
        named = [(v.a, v.b) for v in list_verdicts(serving.current.catalog) if v.a.startswith("/")]
        named = [(a, b) for a, b in named if b.startswith("/")]
        return [(a, b, s) for (a, b), s in zip(named, pair_scores(named), strict=True) if s is not None]

    def discard_files(paths: list[str], kept: str, reason: Mapping[str, Any]) -> list[Discarded]:
        # Under the gate: a reindex's switch waits for these moves, so none lands in the old index.
        # The copies go only while the file kept is still there as indexed.
        with serving.use() as ctx:
            log_path = settings.data_dir / LOG_NAME
            return discard_keeping(paths, [kept], ctx, log_path, reason, protect=settings.protect)

    def check_visible(path: str) -> None:
        # What the page may show, it may act on: the thumbnails' rule (inside the roots, indexed).
        thumbnails.by_path(path)

    def confirmed() -> list[float]:
        return [float(s) for s in json.loads(serving.current.catalog.get_meta(CONFIRMED_META_KEY) or "[]")]

    def add_confirmed(scores: list[float]) -> None:
        if scores:
            with confirmed_lock:  # read, append, write: one page request at a time
                kept = [*confirmed(), *scores][-MAX_CONFIRMED:]
                serving.current.catalog.set_meta(CONFIRMED_META_KEY, json.dumps(kept))

    review = ReviewBackend(
        groups=groups,
        neighbour_scores=neighbour_scores,
        generation=index_generation,
        verdict_pairs=verdict_pairs,
        pair_scores=pair_scores,
        mark_distinct=lambda paths: mark_distinct(serving.current.catalog, paths),
        discard=discard_files,
        check_visible=check_visible,
        confirmed=confirmed,
        add_confirmed=add_confirmed,
    )
    backend = SearchPageBackend(
        search_image,
        search_like_path,
        lambda ref: thumbnails.by_id(ref) if isinstance(ref, int) else thumbnails.by_path(ref),
        path_of,
        check=serving_check(serving),
        search_image_flipped=lambda data, k: search_image(data, k, True),
        search_image_cropped=lambda data, k, flip: search_image(data, k, flip, True),
        review=review,
    )
    app = create_app(page=PageSurface(config, backend))
    server = HttpServer(app, bind_tcp(host, port, "--search-page"), "imgwatch-search-page")
    server.start()
    url = f"http://{_bracketed(host)}:{server.port}/"
    if own_token:
        log.info("search page on %s (open the address `imgwatch status` prints: it carries the token)", url)
        # Only over the control socket, which only this user can reach; never in the log.
        return server, f"{url}?token={token}"
    log.info("search page on %s (the webhook token is required)", url)
    return server, url


def start_control_socket(parts: DaemonParts) -> HttpServer:
    """The data dir's socket, for the CLI; its requests stay out of the access log (status polls)."""

    from imgwatch.dedupe import plan_from_index, stored_scores
    from imgwatch.search import EVERYTHING
    from imgwatch.trash import LOG_NAME, discard_keeping
    from imgwatch.verdicts import duplicate_catalog
    from imgwatch.web.local import DedupeCalls

    serving = parts.serving

    def search(queries: list[tuple[str, bytes | str]], k: int) -> Reply:
        with serving.use() as ctx:
            return _results(search_images(queries, ctx, k=k))

    def search_like_paths(paths: list[str], k: int) -> Reply:
        with serving.use() as ctx:
            return _results(search_like(paths, ctx, k=k))

    def search_with(
        queries: list[tuple[str, bytes | str]], k: int, flip: bool, crops: bool, where: SearchFilter
    ) -> Reply:
        with serving.use() as ctx:
            return _results(search_images(queries, ctx, k=k, flip=flip, crops=crops, where=where))

    def search_like_with(paths: list[str], k: int, where: SearchFilter) -> Reply:
        with serving.use() as ctx:
            return _results(search_like(paths, ctx, k=k, where=where))

    def duplicates(threshold: float, exact: bool) -> Reply:
        return duplicates_with(threshold, exact, EVERYTHING)

    def duplicates_with(threshold: float, exact: bool, where: SearchFilter) -> Reply:
        with serving.use() as ctx:
            groups = (
                find_exact_duplicates(ctx.catalog, where)
                if exact
                # The scratch file (16 kB per 4096-d vector) in the data dir: /tmp may be RAM (tmpfs).
                else find_duplicates(
                    ctx, threshold=threshold, where=where, scratch_dir=parts.settings.data_dir
                )
            )
        # "filtered": a daemon from before the filters ignored them (its request model took any
        # field); the CLI refuses a filtered answer without this mark.
        return {"groups": [g.as_dict() for g in groups]} | ({"filtered": True} if where.active else {})

    def mark(paths: list[str], note: str | None) -> Reply:
        return mark_distinct(serving.current.catalog, paths, note).as_dict()

    def withdraw(a: str, b: str) -> Reply:
        return {"withdrawn": withdraw_verdict(serving.current.catalog, a, b).as_dict()}

    check = serving_check(serving)

    def check_with(queries: list[tuple[str, bytes | str]], threshold: float, where: SearchFilter) -> Reply:
        from imgwatch.check import check_images

        with serving.use() as ctx:
            return check_reply(check_images(queries, ctx, threshold=threshold, where=where)) | {
                "filtered": True
            }

    verdicts = VerdictCalls(
        list_all=lambda: {"verdicts": [v.as_dict() for v in list_verdicts(serving.current.catalog)]},
        mark=mark,
        withdraw=withdraw,
    )

    def invoke(payload: dict[str, Any]) -> Reply:
        """``imgwatch invoke`` while the daemon runs: the payload takes the webhook's path."""
        parsed = parse_body(json.dumps(payload).encode(), parts.allowed, Source.WEBHOOK)
        for event in parsed.events:
            parts.submit(event)
        return {"accepted": len(parsed.events), "ignored": parsed.ignored}

    def dedupe_plan(rule: str, protect: list[str], threshold: float, exact: bool) -> Reply:
        with serving.use() as ctx:
            groups = (
                find_exact_duplicates(ctx.catalog)
                if exact
                else find_duplicates(ctx, threshold=threshold, scratch_dir=parts.settings.data_dir)
            )
            catalog = duplicate_catalog(ctx.catalog)
            # The daemon's own protected folders hold whatever the caller sent.
            folders = [*parts.settings.protect, *protect]
            near = stored_scores(ctx, threshold)
            return plan_from_index(groups, catalog, rule, folders, os.path.realpath, near).as_dict()

    def discard(paths: list[str], kept: list[str], reason: dict[str, Any], protect: list[str]) -> Reply:
        log_path = parts.settings.data_dir / LOG_NAME
        folders = [*parts.settings.protect, *(os.path.abspath(d) for d in protect)]
        # Under the gate: a reindex's switch waits for these moves, so none lands in the old index.
        with serving.use() as ctx:
            moved = discard_keeping(paths, kept, ctx, log_path, reason, protect=folders)
        return {"discarded": [d.as_dict() for d in moved]}

    def report(failures: bool) -> Reply:
        from imgwatch.status import gather_status, with_live

        # The catalog's half as `status` reads it without a daemon, then the live half (the vector
        # count among it: the store is this process's, not for a second client to open).
        return with_live(
            gather_status(parts.settings, include_failures=failures, vectors=False), parts.status()
        )

    surface = LocalSurface(
        status=parts.status,
        report=report,
        search=search,
        search_like=search_like_paths,
        duplicates=duplicates,
        index=parts.index,
        invoke=invoke,
        run_job=parts.run_job,
        forget_root=parts.forget_root,
        verdicts=verdicts,
        search_with=search_with,
        search_like_with=search_like_with,
        check=lambda queries, threshold: check_reply(check(queries, threshold)),
        dedupe=DedupeCalls(plan=dedupe_plan, discard=discard),
        duplicates_with=duplicates_with,
        check_with=check_with,
        check_cropped=serving_check_cropped(serving),
    )
    path: Path = socket_path(parts.settings.data_dir)
    server = HttpServer(create_app(local=surface), bind_unix(path), "imgwatch-endpoint", work=surface.work)
    server.start()
    return server


def _results(results: list[QueryResult]) -> Reply:
    return {
        "results": [
            {"query": r.query, "results": [m.as_dict() for m in r.matches]}
            | ({"error": r.error} if r.error else {})
            for r in results
        ]
    }


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
