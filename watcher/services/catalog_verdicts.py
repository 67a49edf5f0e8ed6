"""The catalog's side of duplicates: byte-identical groups by content hash, and the user's verdicts
that two contents are not duplicates (migration 0006).

Both work on ``files.content_hash`` alone: no vector, no model, so they answer in the same way
before, during and after a reindex, and a verdict outlives every row and path its files had.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from imgwatch.services.abc import FileRecord, FileState
from imgwatch.services.catalog_tables import FILES, VERDICTS, db_now, row_to_record


@dataclass(frozen=True)
class HashVerdict:
    """One stored verdict: the contents with these two hashes are not duplicates of each other."""

    hash_a: str
    """The smaller of the two hashes (pairs are stored ordered, so each pair has one row)."""
    hash_b: str
    created_at: datetime
    """When it was first recorded (UTC)."""
    note: str | None


def ordered(a: str, b: str) -> tuple[str, str]:
    """The pair as the table stores it."""
    return (a, b) if a < b else (b, a)


class CatalogVerdicts:
    """The duplicates' part of :class:`~imgwatch.services.catalog.SQLiteCatalog` (mixed into it)."""

    _engine: Engine

    def exact_duplicate_rows(self) -> list[list[FileRecord]]:
        """Indexed files that share their content hash with another indexed file, one list per hash
        (in hash order), each in path byte order. One GROUP BY over the hash index."""
        indexed = FILES.c.state == FileState.INDEXED.value
        shared = (
            sa.select(FILES.c.content_hash)
            .where(indexed, FILES.c.content_hash.is_not(None))
            .group_by(FILES.c.content_hash)
            .having(sa.func.count() > 1)
        )
        query = (
            sa.select(FILES)
            .where(indexed, FILES.c.content_hash.in_(shared))
            .order_by(FILES.c.content_hash, FILES.c.path)
        )
        groups: list[list[FileRecord]] = []
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                if not groups or groups[-1][0].content_hash != row.content_hash:
                    groups.append([])
                groups[-1].append(row_to_record(row))
        return groups

    def paths_by_hash(self, hashes: Iterable[str]) -> dict[str, list[str]]:
        """The files that have each of these content hashes now (any state), in path byte order;
        a hash no file has is left out."""
        keys = sorted(set(hashes))
        found: dict[str, list[str]] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(
                    sa.select(FILES.c.content_hash, FILES.c.path)
                    .where(FILES.c.content_hash.in_(keys[start : start + 500]))
                    .order_by(FILES.c.path)
                )
                for content_hash, path in rows:
                    found.setdefault(content_hash, []).append(os.fsdecode(path))
        return found

    def add_verdicts(self, pairs: Iterable[tuple[str, str]], note: str | None = None) -> int:
        """Record that each pair of content hashes is not a duplicate; returns how many were new.
        A pair already recorded keeps its date (and its note, unless a new one is given)."""
        now = db_now()
        rows = [
            {"hash_a": a, "hash_b": b, "note": note}
            for a, b in dict.fromkeys(ordered(*pair) for pair in pairs)
        ]
        if not rows:
            return 0
        with self._engine.begin() as conn:
            before = self._verdict_count(conn)
            statement = sqlite_insert(VERDICTS).values(created_at=now)
            statement = statement.on_conflict_do_update(
                index_elements=[VERDICTS.c.hash_a, VERDICTS.c.hash_b],
                set_={"note": sa.func.coalesce(statement.excluded.note, VERDICTS.c.note)},
            )
            conn.execute(statement, rows)
            return self._verdict_count(conn) - before

    def remove_verdict(self, a: str, b: str) -> bool:
        """Withdraw the verdict on this pair of hashes; False if there was none."""
        hash_a, hash_b = ordered(a, b)
        with self._engine.begin() as conn:
            result = conn.execute(
                sa.delete(VERDICTS).where(VERDICTS.c.hash_a == hash_a, VERDICTS.c.hash_b == hash_b)
            )
            return bool(result.rowcount)

    def verdicts(self) -> list[HashVerdict]:
        """Every verdict, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(VERDICTS).order_by(VERDICTS.c.created_at, VERDICTS.c.id)).all()
        return [HashVerdict(r.hash_a, r.hash_b, r.created_at.replace(tzinfo=UTC), r.note) for r in rows]

    @staticmethod
    def _verdict_count(conn: sa.Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(VERDICTS)).scalar_one())
