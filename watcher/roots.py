"""The roots an index remembers: the folders ``index`` and ``watch`` were given (migration 0005).

``reindex`` and ``watch`` fall back on them when neither the command line nor the config file names
any; ``forget`` drops one and removes its files from the index.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.errors import ImgwatchError
from imgwatch.handlers import directory_deleted
from imgwatch.services.abc import RootRecord
from imgwatch.services.catalog import SQLiteCatalog, create_sqlite_engine


class UnknownRootError(ImgwatchError, LookupError):
    """``forget`` was given a folder the index neither remembers nor holds any file of."""

    def __init__(self, root: str) -> None:
        self.root = root
        super().__init__(
            f"{root} is not a root this index remembers, and no indexed file lies under it "
            "(`imgwatch status` lists the remembered roots)"
        )


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


def forget_root(ctx: Context, root: str) -> int:
    """Forget ``root`` and remove every file at or below it from the index (vectors, then rows, as
    for a deleted directory, whether or not the files still exist); returns how many were removed.

    ``root`` is absolute (the caller normalises it; a trailing slash is ignored). A root that is not
    remembered but has files under it is still cleaned out; one that is neither raises
    :class:`UnknownRootError` and changes nothing. The root is forgotten before its files go: if the
    removal is interrupted, running ``forget`` again finishes it (the files still count).

    Over the daemon's local endpoint this is ``POST /roots/forget`` with ``{"root": "/abs/path"}``,
    answered ``200 {"root": "/abs/path", "removed": N}``. A daemon that watches the root (or a folder
    above it) would bring the files straight back, so the route should refuse with ``409
    {"error": "... stop watching it first"}``; :class:`UnknownRootError` (a ``LookupError``) maps
    to ``404``. Call it
    inside ``serving.use()``, as the other writing routes do.
    """
    path = os.path.abspath(root)
    forgotten = ctx.catalog.forget_root(path)
    ids = [record.id for record in ctx.catalog.under(path)]
    if not forgotten and not ids:
        raise UnknownRootError(path)
    directory_deleted.remove(ids, ctx)
    return len(ids)
