"""Whether a catalog's schema is already the latest, found without importing Alembic.

Alembic (and the Mako templates it imports) costs ~0.2 s of every command's start, and nearly every
start finds the catalog already at the head revision: then there is nothing for Alembic to do. Only a
catalog at another revision (older: upgrade it; unknown, from a newer imgwatch: Alembic refuses it),
or none (a new file), goes through :func:`imgwatch.migrations.upgrade`, exactly as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: The revision of the newest migration in ``migrations/versions``. Adding a migration means
#: changing this too: ``tests/test_cold_search.py`` fails until it names Alembic's own head, because
#: a stale value would let catalogs at the old head skip the new migration.
SCHEMA_HEAD = "0006"


def schema_is_current(engine: Engine) -> bool:
    """True only if the catalog's ``alembic_version`` holds exactly :data:`SCHEMA_HEAD`."""
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'")
        ).first()
        if tables is None:
            return False
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    # Alembic keeps one row per head; a branched (or damaged) table is Alembic's to judge.
    return [tuple(row) for row in versions] == [(SCHEMA_HEAD,)]
