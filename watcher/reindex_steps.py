"""What a reindex has to do: the next step from the index as it is towards the settings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from imgwatch.config import Settings
from imgwatch.errors import ImgwatchError
from imgwatch.services.abc import ExtractorSignature

#: An automatically sized ANN index is rebuilt once the ideal parameters are this far off.
REBUILD_FACTOR = 2.0


class SharedCollectionError(ImgwatchError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the index needs rebuilding ({reason}), but its collection is shared with other watchers "
            "(`node` is set): a watcher never replaces a shared collection by itself. See README, "
            '"Scaling out", for changing the extractor of a shared collection.'
        )


class Mode(StrEnum):
    EXTRACT = "extract"
    """Run the (new) model on every file."""
    PROJECT = "project"
    """Apply a newly fitted PCA transform to the stored vectors: no file is read."""
    COPY = "copy"
    """Same vectors, another ANN index."""


@dataclass(frozen=True)
class Step:
    mode: Mode
    reason: str
    signature: ExtractorSignature
    """The target's signature (for :attr:`Mode.PROJECT`, the one being projected from)."""
    index: dict[str, Any]
    pca: int | None = None


def step_dimension(stored: ExtractorSignature, configured: ExtractorSignature, pca: int | None) -> int:
    """The dimension of the collection :func:`next_step` builds: the model's own after an extraction
    (a projection, if any, comes in a later step), else the PCA size or the stored one."""
    if stored.base.key != configured.base.key or (stored.pca and pca != stored.dimension):
        return configured.base.dimension
    return pca or stored.dimension


def next_step(
    stored: ExtractorSignature,
    configured: ExtractorSignature,
    pca: int | None,
    active_index: dict[str, Any],
    wanted_index: dict[str, Any],
) -> Step | None:
    """The next change that brings an index made by ``stored`` towards the settings, or None.

    Projections are only ever fitted on the model's own vectors, so a change of model or PCA size is
    an extraction first and a projection after.
    """
    if stored.base.key != configured.base.key:
        return Step(Mode.EXTRACT, "the configured model/weights differ", configured.base, wanted_index)
    if stored.pca and (pca is None or pca != stored.dimension):
        reason = "PCA turned off" if pca is None else f"PCA changed from {stored.dimension} to {pca}"
        return Step(Mode.EXTRACT, reason, configured.base, wanted_index)
    if pca is not None and not stored.pca:
        return Step(Mode.PROJECT, f"PCA to {pca} dimensions turned on", stored, wanted_index, pca)
    if wanted_index != active_index:
        return Step(Mode.COPY, f"ANN index {active_index} -> {wanted_index}", stored, wanted_index)
    return None


def wanted_pca(
    settings: Settings, stored: ExtractorSignature, active: dict[str, Any], entities: int
) -> int | None:
    """The PCA size the settings ask for. ``pca = auto``: 512 once the collection has reached
    ``pca_auto_at`` vectors (by default where Milvus Lite no longer holds full-size ones comfortably
    in this machine's memory), and whatever size a projected index has: going back to full size
    would run the model on every file again."""
    from imgwatch.capacity import PCA_DIMENSION, machine_memory_bytes, pca_auto_threshold

    if settings.pca != "auto":
        return settings.pca
    if stored.pca:
        return stored.dimension
    if settings.node is not None:
        return None  # a shared collection is never replaced by one watcher (SharedCollectionError)
    threshold = settings.pca_auto_at
    if threshold is None and settings.uses_milvus_lite and (memory := machine_memory_bytes()) is not None:
        threshold = pca_auto_threshold(stored.dimension, memory, ann=active["type"] != "FLAT")
    return PCA_DIMENSION if threshold is not None and entities >= threshold else None


def wanted_index(
    settings: Settings, active: dict[str, Any], entities: int, *, dimension: int | None = None
) -> dict[str, Any]:
    """The index the settings ask for. ``index_type = auto`` picks the type by the collection's size;
    automatically sized parameters follow the size too (on a server, the size of its segments, for
    ``dimension``-d vectors). Both with hysteresis: they change only when off by
    :data:`REBUILD_FACTOR` or more, so a collection near a bar is not rebuilt back and forth."""
    from imgwatch.services.vectors import AUTO, auto_index_params, auto_index_type, server_segment_rows

    kind = settings.index_type
    if kind == AUTO and settings.node is not None:
        # Shared with other watchers, the collection keeps the index it was made with: one watcher
        # cannot replace it (SharedCollectionError), and its own share is not the collection's size.
        return active
    if kind == AUTO:
        kind = auto_index_type(entities, active["type"], settings.exact_search_up_to, REBUILD_FACTOR)
    if settings.index_params and settings.index_type != AUTO:
        return {"type": kind, "params": dict(settings.index_params)}
    rows = None if settings.uses_milvus_lite or dimension is None else server_segment_rows(dimension)
    ideal = auto_index_params(kind, entities, segment_rows=rows)
    if active["type"] != kind:
        return {"type": kind, "params": ideal}
    if "nlist" in ideal:
        ratio = ideal["nlist"] / (int(active["params"].get("nlist", 0)) or 1)
        keep = 1 / REBUILD_FACTOR < ratio < REBUILD_FACTOR
    else:
        # Parameters that step with the size (HNSW's M) move up at their bar, and back only well below.
        bigger = auto_index_params(kind, int(entities * REBUILD_FACTOR), segment_rows=rows)
        keep = active["params"] in (ideal, bigger)
    return active if keep else {"type": kind, "params": ideal}
