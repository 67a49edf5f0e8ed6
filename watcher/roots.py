"""The roots an index remembers: the folders ``index`` and ``watch`` were given (migration 0005).

``reindex`` and ``watch`` fall back on them when neither the command line nor the config file names
any.
"""

from __future__ import annotations

import sqlalchemy as sa

from imgwatch.config import Settings
from imgwatch.services.abc import RootRecord
from imgwatch.services.catalog import SQLiteCatalog, create_sqlite_engine


def remembered_roots(settings: Settings) -> list[RootRecord]:
    """The roots the catalog remembers, read without migrating or locking anything (like ``status``):
    none for a data dir with no catalog yet, or one made before roots were remembered."""
    if not settings.catalog_path.exists():
        return []
    catalog = SQLiteCatalog(create_sqlite_engine(settings.catalog_path))
    try:
        if "roots" not in sa.inspect(catalog.engine).get_table_names():
            return []
        return catalog.root_records()
    finally:
        catalog.close()
