"""The context handlers receive: the services, built once by :mod:`watcher.services.build`."""

from __future__ import annotations

from dataclasses import dataclass

from watcher.services.abc import Catalog, Extractor, FileReader, VectorStore


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    vectors: VectorStore
    extractor: Extractor
    files: FileReader

    @property
    def signature_key(self) -> str:
        """Key of the current extractor's signature: vectors made by another key are stale."""
        return self.extractor.signature.key
