"""What the reindex ledger claims the collection being built holds: its entries made without an error.

The claims are only the build's word: a collection can lose what it was given (dropped from under a
build that failed, a Milvus that did not keep its writes). The build checks them against the
collection itself before it trusts them for a switch (:mod:`imgwatch.reindex_build`).
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa

from imgwatch.services.catalog import LEDGER, SQLiteCatalog

_MADE = LEDGER.c.error.is_(None)


class LedgerClaims:
    def __init__(self, catalog: SQLiteCatalog) -> None:
        self._engine = catalog.engine

    def batches(self, size: int = 1000) -> Iterator[list[int]]:
        """The ids of rows whose vector the new collection should hold, ascending, ``size`` at a time
        (keyset paging: no transaction stays open between batches)."""
        after = -1
        while True:
            with self._engine.connect() as conn:
                batch = list(
                    conn.execute(
                        sa.select(LEDGER.c.file_id)
                        .where(_MADE, LEDGER.c.file_id > after)
                        .order_by(LEDGER.c.file_id)
                        .limit(size)
                    ).scalars()
                )
            if not batch:
                return
            yield batch
            after = batch[-1]

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(LEDGER).where(_MADE)).scalar_one())
