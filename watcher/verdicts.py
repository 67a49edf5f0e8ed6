"""Verdicts that stick: "these files are not duplicates", recorded by content hash.

A verdict names two contents, not two rows or paths: a rename, a move, a rescan, ``index --rebuild``
and a change of weights all keep a file's bytes, so the verdict still applies after each of them.
:func:`imgwatch.duplicates.find_duplicates` never puts two files of a verdict in one group.

The functions take the catalog (``ctx.catalog`` in the daemon and on the search page): they need no
vector store and no model, so the CLI runs them without opening Milvus.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import TYPE_CHECKING, Protocol, cast

from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.services.abc import Catalog, FileRecord
    from imgwatch.services.catalog_verdicts import HashVerdict

#: What a content hash looks like (``imgwatch.services.abc.content_hash``: BLAKE2b, 16 bytes, hex).
_HASH = re.compile(r"[0-9a-f]{32}")


class DuplicateCatalog(Protocol):
    """What duplicates and verdicts use of the catalog, beyond :class:`imgwatch.services.abc.Catalog`."""

    def get(self, path: str) -> FileRecord | None: ...

    def exact_duplicate_rows(self) -> list[list[FileRecord]]: ...

    def paths_by_hash(self, hashes: Sequence[str]) -> dict[str, list[str]]: ...

    def add_verdicts(self, pairs: Sequence[tuple[str, str]], note: str | None = None) -> int: ...

    def remove_verdict(self, a: str, b: str) -> bool: ...

    def verdicts(self) -> list[HashVerdict]: ...


def duplicate_catalog(catalog: Catalog | DuplicateCatalog) -> DuplicateCatalog:
    """``catalog`` as a :class:`DuplicateCatalog`: the real one (``SQLiteCatalog``) is both, but the
    ``Catalog`` protocol does not declare these methods (yet)."""
    return cast("DuplicateCatalog", catalog)


class VerdictError(ImgwatchError):
    """A verdict cannot be recorded or withdrawn as asked."""


class NotIndexedError(VerdictError, LookupError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is not in the index (index it first: imgwatch index DIR)")


class NoContentHashError(VerdictError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"{path} has no content hash yet (it is waiting to be indexed); try again once "
            "`imgwatch status` shows nothing pending"
        )


class IdenticalContentError(VerdictError):
    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        super().__init__(f"{a} and {b} are byte-identical copies: they cannot be marked as not duplicates")


class NoSuchVerdictError(VerdictError, LookupError):
    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        super().__init__(f"there is no verdict on {a} and {b} (imgwatch duplicates --verdicts lists them)")


@dataclass(frozen=True)
class Verdict:
    """A verdict as users see it: the files that have its two contents now."""

    a: str
    """A file that has the first content now (the first in byte order), or the hash if none has."""
    b: str
    hashes: tuple[str, str]
    """The two content hashes, ordered: the verdict's identity."""
    created_at: datetime
    note: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "hashes": list(self.hashes),
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "note": self.note,
        }


@dataclass(frozen=True)
class Marked:
    """What :func:`mark_distinct` did."""

    added: int
    """Pairs that had no verdict before (the others were already recorded)."""
    verdicts: list[Verdict]
    """Every pair among the files given, as now recorded."""

    def as_dict(self) -> dict[str, object]:
        return {"added": self.added, "verdicts": [v.as_dict() for v in self.verdicts]}


def mark_distinct(
    catalog: Catalog | DuplicateCatalog, paths: Sequence[str], note: str | None = None
) -> Marked:
    """Record that no two of these indexed files are duplicates (every pair among them).

    ``paths`` are absolute, as the catalog has them. Raises :class:`NotIndexedError`,
    :class:`NoContentHashError` or :class:`IdenticalContentError` before recording anything.
    """
    store = duplicate_catalog(catalog)
    given = list(dict.fromkeys(paths))
    if len(given) < 2:
        raise VerdictError("--mark-distinct needs at least two different files")
    hashes = {path: _hash_of_path(store, path) for path in given}
    for a, b in combinations(given, 2):
        if hashes[a] == hashes[b]:
            raise IdenticalContentError(a, b)
    pairs = [(hashes[a], hashes[b]) for a, b in combinations(given, 2)]
    added = store.add_verdicts(pairs, note)
    wanted = {_ordered(a, b) for a, b in pairs}
    return Marked(added, [v for v in list_verdicts(store) if v.hashes in wanted])


def withdraw_verdict(catalog: Catalog | DuplicateCatalog, a: str, b: str) -> Verdict:
    """Remove the verdict on ``a`` and ``b`` (each an indexed file's path, or a content hash as
    ``--verdicts`` shows for contents no file has any more) and return it."""
    store = duplicate_catalog(catalog)
    pair = _ordered(_hash_of(store, a), _hash_of(store, b))
    found = [v for v in list_verdicts(store) if v.hashes == pair]
    if not found or not store.remove_verdict(*pair):
        raise NoSuchVerdictError(a, b)
    return found[0]


def list_verdicts(catalog: Catalog | DuplicateCatalog) -> list[Verdict]:
    """Every verdict, oldest first, each with a file that has each content now."""
    store = duplicate_catalog(catalog)
    stored = store.verdicts()
    paths = store.paths_by_hash(sorted({h for v in stored for h in (v.hash_a, v.hash_b)}))

    def named(content: str) -> str:
        return paths[content][0] if content in paths else content

    return [
        Verdict(named(v.hash_a), named(v.hash_b), (v.hash_a, v.hash_b), v.created_at, v.note) for v in stored
    ]


def kept_apart(catalog: Catalog | DuplicateCatalog) -> dict[str, set[str]]:
    """For each content hash with a verdict, the hashes it must never share a group with."""
    apart: dict[str, set[str]] = {}
    for verdict in duplicate_catalog(catalog).verdicts():
        apart.setdefault(verdict.hash_a, set()).add(verdict.hash_b)
        apart.setdefault(verdict.hash_b, set()).add(verdict.hash_a)
    return apart


def looks_like_hash(text: str) -> bool:
    """``text`` has the form of a content hash (a ``--withdraw`` argument may be one)."""
    return _HASH.fullmatch(text) is not None


def _hash_of_path(store: DuplicateCatalog, path: str) -> str:
    record = store.get(path)
    if record is None:
        raise NotIndexedError(path)
    if record.content_hash is None:
        raise NoContentHashError(path)
    return record.content_hash


def _hash_of(store: DuplicateCatalog, ref: str) -> str:
    # A path first: a file may be named like a hash, and then the user means the file.
    if store.get(ref) is None and looks_like_hash(ref):
        return ref
    return _hash_of_path(store, ref)


def _ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)
