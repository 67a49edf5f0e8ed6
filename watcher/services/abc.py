"""Interfaces and plain data shared between handlers and services.

Handlers import only this module (and ``imgwatch.events``): never torch, pymilvus or SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from imgwatch.events import ImageEvent

# Annotations only: importing numpy here would cost every thin client (search through the daemon) ~0.1 s.
Vector: TypeAlias = "npt.NDArray[np.float32]"


@dataclass(frozen=True)
class ExtractorSignature:
    """What made a vector. Two extractors with equal :attr:`key` produce interchangeable vectors."""

    model: str
    """Architecture, e.g. ``torchvision.vgg16``."""
    weights: str
    """Weights identity: ``imagenet1k_v1``, ``sha256:<hex>`` of a state-dict file, or ``random:SEED``."""
    layer: str
    preprocessing: str
    """Version tag of the decode/resize/normalise pipeline; bumped whenever its output changes."""
    dimension: int
    dtype: str
    """Compute precision (fp32/bf16/fp16/int8). Only its :attr:`precision_class` is part of :attr:`key`:
    the extractor uses bf16/fp16 only while their vectors stay within cosine 0.999 of fp32, so those
    mix with fp32's; int8 vectors are further away (cosine >= 0.99), so an index never mixes them."""
    pca: str = ""
    """``""`` for the model's own vectors, else ``"SOURCE->DIM:VERSION"``: projected by the fitted PCA
    transform ``VERSION`` from SOURCE to DIM dimensions (:mod:`imgwatch.services.pca`)."""

    COMPARED = ("model", "weights", "layer", "preprocessing", "dimension", "pca", "precision_class")

    @property
    def precision_class(self) -> str:
        """``int8`` for int8 vectors, ``float`` for the rest (fp32/bf16/fp16, and ``auto``: a new index
        whose model has not loaded yet, which may still settle on int8; see ``LazyExtractor``). A
        signature recorded before classes existed reads as ``float``."""
        return "int8" if self.dtype == "int8" else "float"

    @property
    def key(self) -> str:
        """Short stable id of the fields that change what a vector means."""
        # An empty pca and the float class are left out, so keys of indexes made before PCA or
        # precision classes existed stay valid: no reindex for them.
        compared = {
            f: getattr(self, f)
            for f in self.COMPARED
            if (f != "pca" or self.pca) and (f != "precision_class" or self.precision_class != "float")
        }
        text = json.dumps(compared, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def base(self) -> ExtractorSignature:
        """The model's own signature, before any PCA projection."""
        if not self.pca:
            return self
        return replace(self, pca="", dimension=int(self.pca.split("->", 1)[0]))

    @property
    def pca_version(self) -> str | None:
        return self.pca.rsplit(":", 1)[1] if self.pca else None

    def projected(self, dimension: int, version: str) -> ExtractorSignature:
        """This (unprojected) signature followed by the PCA transform ``version`` to ``dimension``."""
        assert not self.pca, "a projected signature is not projected again"
        return replace(self, pca=f"{self.dimension}->{dimension}:{version}", dimension=dimension)

    def differences(self, other: ExtractorSignature) -> list[str]:
        return [
            f"{f}: index has {getattr(self, f)!r}, configured {getattr(other, f)!r}"
            for f in self.COMPARED
            if getattr(self, f) != getattr(other, f)
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExtractorSignature:
        raw = json.loads(text)
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw or f.default is MISSING})


class FileState(StrEnum):
    PENDING = "pending"
    """Known to need work (new, changed, or interrupted); not yet reflected in the vector store."""
    INDEXED = "indexed"
    FAILED = "failed"


@dataclass(frozen=True)
class FileRecord:
    """One catalog row: a file as the index last saw it."""

    id: int
    """Stable row id; also the file's primary key in the vector store."""
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    state: FileState
    error: str | None
    has_vector: bool
    signature: str | None
    """:attr:`ExtractorSignature.key` of the extractor that made this file's vector."""
    updated_at: datetime

    def has_current_vector(self, signature: str) -> bool:
        """Its vector exists and was made by the extractor with signature key ``signature``."""
        return self.has_vector and self.signature == signature

    def is_current(self, stat: tuple[int, int], signature: str) -> bool:
        """Indexed, with the same ``(size, mtime_ns)`` and a current vector: nothing to do."""
        return (
            self.state is FileState.INDEXED
            and (self.size, self.mtime_ns) == stat
            and self.has_current_vector(signature)
        )


@dataclass(frozen=True)
class FileBlob:
    """A file's bytes, read once, with the stat and hash taken from that same read."""

    path: str
    data: bytes
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class RootRecord:
    """A folder that ``index`` or ``watch`` was given, as the catalog remembers it."""

    path: str
    """Absolute, normalised, in ``os.fsdecode`` form (stored as the exact bytes)."""
    added_at: datetime
    """When a command first used it (UTC)."""
    last_used_at: datetime
    """When a command last used it (UTC)."""
    command: str
    """The command that last used it: ``index`` or ``watch``."""


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class SearchHit:
    id: int
    """The catalog row id for this node's entities; the raw Milvus key for another node's."""
    score: float
    path: str
    node: str | None = None
    """The watcher that indexed it, when that is another one sharing the collection (else None)."""


class Extractor(Protocol):
    @property
    def signature(self) -> ExtractorSignature: ...

    @property
    def images_embedded(self) -> int:
        """How many images went through the model since start: lets tests prove a model did not run."""
        ...

    def embed(self, data: bytes) -> Vector:
        """Decode an encoded image and return its L2-normalised feature vector. Thread-safe; calls
        from several threads are batched together. Raises :class:`imgwatch.errors.ImageError`."""
        ...

    def close(self) -> None: ...


class VectorStore(Protocol):
    def upsert(self, items: Sequence[tuple[int, str, Vector]]) -> None:
        """Insert or replace ``(id, path, vector)`` entities; replaying an upsert changes nothing."""
        ...

    def get_vectors(self, ids: Iterable[int]) -> dict[int, Vector]: ...

    def delete(self, ids: Iterable[int]) -> None: ...

    def search(self, queries: Sequence[Vector], k: int) -> list[list[SearchHit]]: ...

    def count(self, max_age: float = 0.0) -> int:
        """This node's entities; a count up to ``max_age`` seconds old may be reused while writes go on."""
        ...

    def all_ids(self) -> set[int]: ...

    @property
    def collection(self) -> str: ...

    def collections(self) -> list[str]:
        """Every collection in the same database (for cleaning up after an interrupted reindex)."""
        ...

    def drop_collection(self, name: str) -> None:
        """Drop another collection of the same database."""
        ...

    def compact(self) -> dict[str, int]:
        """Reclaim the space deletes left behind, where the engine can."""
        ...

    def drop(self) -> None:
        """Remove every entity (and the collection)."""
        ...

    def close(self) -> None: ...


class Catalog(Protocol):
    """What the index knows about each file, plus the daemon's journal of unfinished events."""

    def get(self, path: str) -> FileRecord | None: ...

    def get_many(self, ids: Iterable[int]) -> dict[int, FileRecord]: ...

    def find_by_hash(self, content_hash: str, *, exclude_path: str, signature: str) -> FileRecord | None:
        """An indexed file with this content (other than ``exclude_path``) whose vector was made by the
        extractor with signature key ``signature``."""
        ...

    def under(self, root: str) -> Iterator[FileRecord]:
        """Every record at or below the directory ``root``."""
        ...

    def count_under(self, root: str) -> int: ...

    def mark_pending(self, path: str, size: int, mtime_ns: int) -> FileRecord:
        """Create the row (or keep its id) and flag it as needing work, before any work starts."""
        ...

    def mark_indexed(self, record_id: int, blob: FileBlob, signature: str) -> None: ...

    def mark_failed(
        self, record_id: int, size: int, mtime_ns: int, content_hash: str | None, error: str
    ) -> None: ...

    def touch(self, record_id: int, size: int, mtime_ns: int) -> None:
        """Record a new size/mtime for content that did not change."""
        ...

    def move(self, record_id: int, dest_path: str) -> None: ...

    def delete(self, record_id: int) -> None: ...

    def delete_many(self, record_ids: Iterable[int]) -> None: ...

    def move_many(self, moves: Iterable[tuple[int, str]]) -> None:
        """Rename many rows at once: ``(record_id, new_path)`` pairs, in one transaction."""
        ...

    def counts(self) -> Mapping[FileState, int]: ...

    def failures(self) -> list[FileRecord]: ...

    def get_meta(self, key: str) -> str | None: ...

    def journal_append(self, event: ImageEvent) -> int:
        """Record an event before anything acts on it; returns its journal id."""
        ...

    def journal_done(self, ids: Iterable[int], error: str | None = None) -> None: ...

    def journal_retry(self, ids: Iterable[int], error: str) -> None: ...

    def journal_pending(self) -> list[tuple[int, ImageEvent]]:
        """Events not yet done, oldest first; rows this version cannot read are skipped, and kept."""
        ...

    def journal_counts(self) -> dict[str, int]:
        """``pending`` (to replay), ``done``, and ``unreadable`` (not done, skipped by journal_pending)."""
        ...

    def ids_with_vectors(self) -> dict[int, FileRecord]: ...

    def all_ids(self) -> set[int]: ...

    def iter_ids_with_vectors(self, batch_size: int = 1000) -> Iterator[list[int]]:
        """Ids of indexed rows with a vector, ascending, in batches: never all of them at once."""
        ...

    def prune_journal(self, older_than: datetime) -> int: ...

    def optimise_storage(self, vacuum_free_share: float = 0.2) -> dict[str, int]: ...

    def record_job_run(
        self,
        job: str,
        started_at: datetime,
        duration_s: float,
        outcome: str,
        counts: Mapping[str, int],
        error: str | None,
    ) -> None: ...

    def last_job_runs(self) -> dict[str, dict[str, object]]: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def remember_roots(self, paths: Iterable[str], command: str) -> None:
        """Record that ``command`` used these (normalised) roots now: new ones are added, known ones
        get their last use and command updated."""
        ...

    def known_roots(self) -> list[str]:
        """The remembered roots, in path order."""
        ...

    def root_records(self) -> list[RootRecord]:
        """The remembered roots with when and by what they were used, in path order."""
        ...

    def forget_root(self, path: str) -> bool:
        """Drop ``path`` from the remembered roots (its files are not touched); False if it was not
        remembered."""
        ...

    def close(self) -> None: ...


class FileReader(Protocol):
    def stat(self, path: str) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of a regular file (following symlinks), or ``None``."""
        ...

    def gone(self, path: str) -> bool:
        """True when no regular file is at ``path`` any more: nothing there (ENOENT, ENOTDIR, a
        symlink to nothing), or something else than a file. False for a file, and for a path that
        cannot be stat'ed for another reason (permission denied, an I/O error, a symlink loop): that
        says nothing about whether the file is there, so its entry must stay."""
        ...

    def read(self, path: str) -> FileBlob:
        """Read a whole file once; raises :class:`imgwatch.errors.ImageError` for files that cannot be
        read (vanished, unreadable, too big, not a regular file)."""
        ...
