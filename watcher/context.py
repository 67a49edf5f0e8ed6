"""The context handlers receive: the services, built once by :mod:`imgwatch.services.build`."""

from __future__ import annotations

from dataclasses import dataclass, field

from imgwatch.pathlocks import PathLocks
from imgwatch.services.abc import Catalog, Extractor, FileReader, VectorStore


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    vectors: VectorStore
    extractor: Extractor
    files: FileReader
    paths: PathLocks = field(default_factory=PathLocks, compare=False)
    """The paths being handled now: one handler per path at a time, whoever dispatches."""

    @property
    def signature_key(self) -> str:
        """Key of the current extractor's signature: vectors made by another key are stale."""
        return self.extractor.signature.key
