"""The context handlers receive: the services, built once by :mod:`imgwatch.services.build`."""

from __future__ import annotations

from dataclasses import dataclass, field

from imgwatch.pathlocks import PathLocks
from imgwatch.services.abc import Catalog, Extractor, FileReader, Vector, VectorStore
from imgwatch.services.single_flight import SingleFlight


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    vectors: VectorStore
    extractor: Extractor
    files: FileReader
    paths: PathLocks = field(default_factory=PathLocks, compare=False)
    """The paths being handled now: one handler per path at a time, whoever dispatches."""
    extractions: SingleFlight[Vector] = field(default_factory=SingleFlight, compare=False)
    """The extractions under way, by ``(extractor, content hash)``: copies of one content in flight
    together share one model run. The extractor is in the key because a reindex's context makes
    other vectors from the same bytes; not its signature, which for a new index settles (int8 or
    float) only when the model has loaded, while copies are already waiting."""

    @property
    def signature_key(self) -> str:
        """Key of the current extractor's signature: vectors made by another key are stale."""
        return self.extractor.signature.key
