"""``imgwatch migrate`` carried out by the daemon, while it keeps serving (issue 17).

The CLI asks over the control socket (``POST /migrate``) and follows the copy in ``GET /status``.
The daemon copies as :func:`imgwatch.migrate.migrate` does without it, with three differences:

- for the length of the copy the serving context's store is a :class:`MirroredStore`: searches and
  every other read go to the source, and every write (upsert, rename, delete) goes to both stores,
  so that nothing a handler writes meanwhile is lost or left stale in the target;
- each batch is read from the source and written to the target under ``serving.exclusive()``: no
  handler writes between the read and the write (which could otherwise put back an old vector);
- the verification, the record of the new store (``STORE_META_KEY``) and the switch of the serving
  context to the target happen in one exclusive block, as a reindex's switch does.

A daemon stopped (or killed) mid-copy leaves ``MIGRATION_META_KEY`` behind: ``imgwatch migrate``
given again (to this daemon or, without one, to the CLI) resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from imgwatch.errors import ImgwatchError
from imgwatch.migrate import (
    LITE,
    MigrationError,
    MigrationResult,
    Stores,
    migrate,
    resolve_target,
    target_store_args,
)
from imgwatch.services.abc import SearchHit, Vector
from imgwatch.services.build import Services

log = logging.getLogger("imgwatch.migrate")

Reply = dict[str, Any]


class MirroredStore:
    """The serving store during a copy: reads from ``source``, writes to ``source`` and ``target``.

    Writes go to the source first: if the target's write fails, the handler fails and is retried,
    and replaying an upsert or a delete changes nothing. A rename is written to the target as a
    whole upsert (the vector read back from the source), since the entity may not be copied yet."""

    def __init__(self, source: Any, target: Any) -> None:
        self.source = source
        self.target = target
        self._lock = threading.Lock()
        self.mirrored = 0
        """Writes (entities) also made in the target: the proof that the copy ran while serving."""

    def _count(self, n: int) -> None:
        with self._lock:
            self.mirrored += n

    def upsert(self, items: Sequence[tuple[int, str, Vector]]) -> None:
        self.source.upsert(items)
        self.target.upsert(items)
        self._count(len(items))

    def rename(self, items: Sequence[tuple[int, str]]) -> None:
        self.source.rename(items)
        vectors = self.source.get_vectors(key for key, _ in items)
        self.target.upsert([(key, path, vectors[key]) for key, path in items if key in vectors])
        self._count(len(items))

    def delete(self, ids: Iterable[int]) -> None:
        keys = list(ids)
        self.source.delete(keys)
        self.target.delete(keys)
        self._count(len(keys))

    def drop(self) -> None:
        self.source.drop()
        self.target.drop()

    def get_vectors(self, ids: Iterable[int]) -> dict[int, Vector]:
        return dict(self.source.get_vectors(ids))

    def search(self, queries: Sequence[Vector], k: int) -> list[list[SearchHit]]:
        return list(self.source.search(queries, k))

    def count(self, max_age: float = 0.0) -> int:
        return int(self.source.count(max_age))

    def all_ids(self) -> set[int]:
        return set(self.source.all_ids())

    @property
    def collection(self) -> str:
        return str(self.source.collection)

    def collections(self) -> list[str]:
        return list(self.source.collections())

    def drop_collection(self, name: str) -> None:
        self.source.drop_collection(name)

    def compact(self) -> dict[str, int]:
        return dict(self.source.compact())

    def close(self) -> None:
        """Nothing: the migration owns both stores and closes the one that is no longer served."""

    def __getattr__(self, name: str) -> Any:
        # The rest of MilvusVectorStore (present, ids_for_path, index_spec, ...) only reads.
        return getattr(self.source, name)


class LiveMigration:
    """One copy at a time, in a thread of its own; :meth:`status` for ``GET /status``."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] | None = None
        self._mirror: MirroredStore | None = None
        self._runs = 0

    def start(self, to: str, token: str | None = None, batch: int = 500, pause: float = 0.0) -> Reply:
        """Open the target and start copying; the reply names the run (``id``), the source and the
        target. Refused (ImgwatchError) when a copy runs, the index is there already, a reindex is
        unfinished, or the target cannot be opened."""
        from imgwatch.services.build import REINDEX_META_KEY
        from imgwatch.services.vectors import MilvusVectorStore

        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                assert self._state is not None
                raise ImgwatchError(f"a migration to {self._state['target']} is running already")
            services = self._services
            settings = services.settings
            target_uri = resolve_target(to, settings)
            if services.catalog.get_meta(REINDEX_META_KEY):
                raise ImgwatchError("a reindex is unfinished: let it finish before migrating")
            token = None if to == LITE else (token if token is not None else settings.milvus_token)
            target = MilvusVectorStore(
                target_uri, token=token, **target_store_args(services.catalog, settings)
            )
            self._runs += 1
            self._stop.clear()
            self._state = {
                "id": f"{os.getpid()}-{self._runs}",
                "phase": "copying",
                "source": settings.vectors_uri,
                "target": target_uri,
                "done": 0,
                "total": None,
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._thread = threading.Thread(
                target=self._run,
                args=(target, to, token, batch, pause),
                name="imgwatch-migrate",
                daemon=True,  # a copy cut short resumes from MIGRATION_META_KEY when asked again
            )
            self._thread.start()
            return dict(self._state)

    def running(self) -> str | None:
        """Why a shadow reindex must wait now (a copy runs), or None."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._state is not None:
                return f"a migration to {self._state['target']} is running"
            return None

    def status(self) -> Reply | None:
        with self._lock:
            if self._state is None:
                return None
            mirrored = {"mirrored_writes": self._mirror.mirrored} if self._mirror is not None else {}
            return dict(self._state) | mirrored

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            assert self._state is not None
            self._state.update(done=done, total=total)

    def _run(self, target: Any, to: str, token: str | None, batch: int, pause: float) -> None:
        services = self._services
        serving = services.serving
        source_uri = services.settings.vectors_uri
        with serving.exclusive():
            source = serving.current.vectors
            mirror = MirroredStore(source, target)
            serving.replace(dataclasses.replace(serving.current, vectors=mirror))
        self._mirror = mirror
        switched = False

        @contextlib.contextmanager
        def gate() -> Iterator[None]:
            with serving.exclusive() as ctx:
                if ctx.vectors is not mirror:
                    # A reindex switched collections meanwhile: its new collection is in the source
                    # store and not mirrored. Copying on would move a stale index.
                    raise MigrationError("the serving collection changed during the copy; run migrate again")
                yield

        def switch() -> None:
            # Inside migrate()'s last exclusive block, after the verification and STORE_META_KEY.
            nonlocal switched
            serving.replace(dataclasses.replace(serving.current, vectors=target))
            services.stack.callback(target.close)
            changes: dict[str, Any] = {"milvus_uri": None if to == LITE else to}
            if token is not None:
                changes["milvus_token"] = token
            # What a reindex opens its new collection with, from now on: the new store.
            services.settings = services.settings.replace(**changes)
            switched = True

        log.info("copying the index from %s to %s while serving", source_uri, target.uri)
        try:
            result = migrate(
                services.catalog,
                Stores(source, source_uri, target, to),
                batch=batch,
                progress=self._progress,
                gate=gate,
                pause=pause,
                stop=self._stop,
                on_switch=switch,
            )
        except Exception as e:  # noqa: BLE001 - any failure ends this copy: in status, resumable
            if not switched:
                with serving.exclusive() as ctx:
                    if ctx.vectors is mirror:  # else a reindex replaced it: that one serves
                        serving.replace(dataclasses.replace(ctx, vectors=source))
                target.close()
            self._finished(None, e)
            return
        # Nobody reaches the old store any more: searches and handlers now start on the target.
        source.close()
        self._finished(result, None)

    def _finished(self, result: MigrationResult | None, error: Exception | None) -> None:
        with self._lock:
            assert self._state is not None and self._mirror is not None
            self._state["mirrored_writes"] = self._mirror.mirrored
            self._mirror = None
            if result is not None:
                self._state.update(phase="done", result=result.as_dict())
                log.info("the index is in %s now (%d vectors)", self._state["target"], result.total)
            else:
                self._state.update(phase="failed", error=f"{error}")
                log.error("the copy to %s failed: %s", self._state["target"], error)


def job_runner(run_job: Callable[[str], Reply], migration: LiveMigration) -> Callable[..., Reply]:
    """The control socket's jobs: ``("migrate", options)`` starts a copy, any other name ``run_job``."""

    def run(name: str, options: dict[str, Any] | None = None) -> Reply:
        if name == "migrate":
            return migration.start(**(options or {}))
        return run_job(name)

    return run
