"""The roots that ``index`` and ``watch`` were given (migration 0005), so that ``reindex`` and ``watch``
without arguments use them again."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from imgwatch.services.abc import RootRecord
from imgwatch.services.catalog_tables import ROOTS, db_now


class CatalogRoots:
    """The roots' part of :class:`~imgwatch.services.catalog.SQLiteCatalog` (mixed into it)."""

    _engine: Engine

    def remember_roots(self, paths: Iterable[str], command: str) -> None:
        now = db_now()
        rows = [{"path": os.fsencode(path)} for path in dict.fromkeys(paths)]
        if not rows:
            return
        statement = sqlite_insert(ROOTS).values(added_at=now, last_used_at=now, command=command)
        statement = statement.on_conflict_do_update(
            index_elements=[ROOTS.c.path], set_={"last_used_at": now, "command": command}
        )
        with self._engine.begin() as conn:
            conn.execute(statement, rows)

    def known_roots(self) -> list[str]:
        return [record.path for record in self.root_records()]

    def root_records(self) -> list[RootRecord]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(ROOTS).order_by(ROOTS.c.path)).all()
        return [
            RootRecord(
                path=os.fsdecode(row.path),
                added_at=row.added_at.replace(tzinfo=UTC),
                last_used_at=row.last_used_at.replace(tzinfo=UTC),
                command=row.command,
            )
            for row in rows
        ]

    def forget_root(self, path: str) -> bool:
        with self._engine.begin() as conn:
            result = conn.execute(sa.delete(ROOTS).where(ROOTS.c.path == os.fsencode(path)))
            return bool(result.rowcount)
