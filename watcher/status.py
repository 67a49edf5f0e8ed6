"""``imgwatch status``: what is indexed, what failed and why, which extractor, where the data lives."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from imgwatch.capacity import add_capacity
from imgwatch.config import Settings
from imgwatch.errors import ConfigError, DataDirBusyError
from imgwatch.lock import DataDirLock, lock_holder
from imgwatch.services.abc import FileState
from imgwatch.services.build import (
    REINDEX_META_KEY,
    active_collection,
    moved_store,
    stored_index,
    stored_signature,
)
from imgwatch.services.catalog import SQLiteCatalog, create_sqlite_engine


def with_live(report: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``report`` completed by a running daemon's own status (``GET /status``)."""
    live = dict(live)
    report["vectors"] = live.pop("vectors")
    report["daemon"].update(live, state="running")
    return add_capacity(report)


def gather_status(
    settings: Settings, *, include_failures: bool = False, vectors: bool = True
) -> dict[str, Any]:
    """A JSON-ready report. Reads only: it never migrates the catalog, and it opens the vector store
    only while nobody else holds the data dir (so it cannot get in a starting daemon's way).
    ``vectors=False`` leaves the vector count out (the daemon, which has the store open, adds its own)."""
    holder = lock_holder(settings.data_dir)
    daemon_running = holder is not None and holder.command == "watch"
    report: dict[str, Any] = {
        "data_dir": str(settings.data_dir),
        "catalog": str(settings.catalog_path),
        "milvus_uri": settings.vectors_uri,
        "engine": "Milvus Lite" if settings.uses_milvus_lite else "Milvus server",
        "collection": settings.collection,
        "daemon": {"running": daemon_running, "pid": holder.pid if daemon_running and holder else None},
        "busy": {"pid": holder.pid, "command": holder.command} if holder else None,
        "files": {state.value: 0 for state in FileState},
        "vectors": 0,
        "extractor": None,
        "configured_weights": settings.weights,
        "pca": {"setting": settings.pca, "auto_at": settings.pca_auto_at},
        "jobs": {},
        "reindex": None,
        "roots": [],
    }
    if include_failures:
        report["failed_files"] = []
    if not settings.catalog_path.exists():
        return report

    catalog = SQLiteCatalog(create_sqlite_engine(settings.catalog_path))
    try:
        if not _has_schema(catalog):
            return report
        try:
            settings = moved_store(settings, catalog)
        except ConfigError as e:
            # Reported, not raised: status is where a user looks to find out what is wrong.
            report["store_error"] = e.problem
            report["vectors"] = None
            vectors = False
        report["milvus_uri"] = settings.vectors_uri
        report["engine"] = "Milvus Lite" if settings.uses_milvus_lite else "Milvus server"
        report["files"] = {state.value: n for state, n in catalog.counts().items()}
        if "job_runs" in sa.inspect(catalog.engine).get_table_names():
            report["jobs"] = {name: {"last_run": run} for name, run in catalog.last_job_runs().items()}
        signature = stored_signature(catalog)
        report["extractor"] = dataclasses.asdict(signature) | {"key": signature.key} if signature else None
        report["collection"] = active_collection(catalog, settings)
        report["ann_index"] = stored_index(catalog, settings)
        report["reindex"] = _reindex_progress(catalog)
        report["roots"] = _remembered_roots(catalog)
        if include_failures:
            report["failed_files"] = [{"path": r.path, "error": r.error} for r in catalog.failures()]
    finally:
        catalog.close()
    if vectors:
        report["vectors"] = _count_vectors(
            settings, report["collection"], signature.dimension if signature else None, busy=holder
        )
        add_capacity(report)
    return report


def _reindex_progress(catalog: SQLiteCatalog) -> dict[str, Any] | None:
    """An unfinished reindex as the catalog records it (a running daemon reports more)."""
    import json

    from imgwatch.services.ledger import ReindexLedger

    text = catalog.get_meta(REINDEX_META_KEY)
    if not text or "reindex_vectors" not in sa.inspect(catalog.engine).get_table_names():
        return None
    started = json.loads(text)
    return {
        "phase": "unfinished",
        "collection": started["collection"],
        "target": started["signature_key"],
        "started_at": started["started_at"],
        **ReindexLedger(catalog).progress(),
    }


def _remembered_roots(catalog: SQLiteCatalog) -> list[dict[str, Any]]:
    """The roots ``index`` and ``watch`` were given (none in a catalog older than migration 0005)."""
    if "roots" not in sa.inspect(catalog.engine).get_table_names():
        return []
    return [
        {
            "path": root.path,
            "added_at": root.added_at.isoformat(),
            "last_used_at": root.last_used_at.isoformat(),
            "command": root.command,
            "exists": os.path.isdir(root.path),
        }
        for root in catalog.root_records()
    ]


def _has_schema(catalog: SQLiteCatalog) -> bool:
    return "files" in sa.inspect(catalog.engine).get_table_names()


def _count_vectors(settings: Settings, collection: str, dimension: int | None, *, busy: object) -> int | None:
    """Entities in Milvus, or ``None`` when another process has the (Lite) store open."""
    if dimension is None:
        return 0
    lite = settings.uses_milvus_lite
    if lite and (busy is not None or not Path(settings.vectors_uri).exists()):
        return None if busy is not None else 0
    from imgwatch.services.vectors import MilvusVectorStore  # not needed when a daemon has the store

    lock = DataDirLock(settings.data_dir, "status") if lite else None
    if lock is not None:
        try:
            lock.acquire(brief_wait=0)
        except DataDirBusyError:
            return None  # someone started between our look and our try; leave them be
    try:
        store = MilvusVectorStore(
            settings.vectors_uri,
            dimension=dimension,
            collection=collection,
            token=settings.milvus_token,
            index_type=settings.index_type,
        )
        try:
            return store.count()
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()
