"""The catalog's journal: events learnt and not yet acted on (migration 0002), replayed after a restart."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgwatch.events import EVENT_TYPES, ImageEvent, Source, paths_of
from imgwatch.services.catalog_tables import JOURNAL, db_now

# The catalog's log lines keep the one name they always had, whichever of its modules writes them.
log = logging.getLogger("imgwatch.services.catalog")


def _journal_readable() -> sa.ColumnElement[bool]:
    """A journal row this version can turn back into its event: a kind and a source it knows, and as
    many paths as that kind has. Others come from a newer or older imgwatch, or from damage; they
    are left as they are (a version that understands them may replay them) and skipped."""
    two_paths = [
        name for name, cls in EVENT_TYPES.items() if "dest_path" in {f.name for f in dataclasses.fields(cls)}
    ]
    one_path = [name for name in EVENT_TYPES if name not in two_paths]
    return sa.and_(
        JOURNAL.c.source.in_([source.value for source in Source]),
        sa.or_(
            sa.and_(JOURNAL.c.kind.in_(one_path), JOURNAL.c.dest_path.is_(None)),
            sa.and_(JOURNAL.c.kind.in_(two_paths), JOURNAL.c.dest_path.is_not(None)),
        ),
    )


class CatalogJournal:
    """The journal's part of :class:`~imgwatch.services.catalog.SQLiteCatalog` (mixed into it)."""

    _engine: Engine

    def journal_append(self, event: ImageEvent) -> int:
        paths = paths_of(event)
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.insert(JOURNAL).values(
                    kind=type(event).__name__,
                    path=os.fsencode(paths[0]),
                    dest_path=os.fsencode(paths[1]) if len(paths) > 1 else None,
                    source=event.source.value,
                    occurred_at=event.occurred_at.astimezone(UTC).replace(tzinfo=None),
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def journal_done(self, ids: Iterable[int], error: str | None = None) -> None:
        keys = list(ids)
        if keys:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(JOURNAL).where(JOURNAL.c.id.in_(keys)).values(done_at=db_now(), error=error)
                )

    def journal_retry(self, ids: Iterable[int], error: str) -> None:
        keys = list(ids)
        if keys:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(JOURNAL)
                    .where(JOURNAL.c.id.in_(keys))
                    .values(attempts=JOURNAL.c.attempts + 1, error=error)
                )

    def journal_pending(self) -> list[tuple[int, ImageEvent]]:
        """Events not yet done, oldest first, to replay after a restart. A row this version cannot
        read is logged and skipped, and stays in the journal untouched: one bad row must not keep
        the daemon from starting."""
        readable = _journal_readable().label("readable")
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(JOURNAL, readable).where(JOURNAL.c.done_at.is_(None)).order_by(JOURNAL.c.id)
            ).all()
        pending = []
        for row in rows:
            if not row.readable:
                log.warning(
                    "journal row %d (kind %r, source %r, path %r) is not an event this version knows; "
                    "skipped and left in the journal",
                    row.id,
                    row.kind,
                    row.source,
                    os.fsdecode(row.path),
                )
                continue
            cls = EVENT_TYPES[row.kind]
            # ``is not None``, as in _journal_readable(): that is what decided the number of paths.
            paths = [os.fsdecode(row.path)]
            if row.dest_path is not None:
                paths.append(os.fsdecode(row.dest_path))
            occurred_at = row.occurred_at.replace(tzinfo=UTC)
            event = cls(*paths, source=Source(row.source), occurred_at=occurred_at)
            pending.append((int(row.id), event))
        return pending

    def journal_counts(self) -> dict[str, int]:
        """``pending``: rows to replay; ``unreadable``: rows not done that this version skips (see
        :meth:`journal_pending`), so that they do not look like work that never gets done."""
        not_done = JOURNAL.c.done_at.is_(None)
        with self._engine.connect() as conn:
            pending = conn.execute(
                sa.select(sa.func.count()).select_from(JOURNAL).where(not_done, _journal_readable())
            ).scalar_one()
            unreadable = conn.execute(
                sa.select(sa.func.count()).select_from(JOURNAL).where(not_done, ~_journal_readable())
            ).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(JOURNAL)).scalar_one()
        return {
            "pending": int(pending),
            "done": int(total) - int(pending) - int(unreadable),
            "unreadable": int(unreadable),
        }

    def prune_journal(self, older_than: datetime) -> int:
        """Delete done journal rows older than ``older_than`` (UTC); returns how many."""
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.delete(JOURNAL).where(
                    JOURNAL.c.done_at.is_not(None), JOURNAL.c.done_at < older_than.replace(tzinfo=None)
                )
            )
            return int(result.rowcount or 0)
