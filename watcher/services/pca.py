"""PCA projection of feature vectors (section 3.1 of the classic VGG + Milvus recipe).

A 4096-d fc7 vector costs 16 KiB in Milvus; 512 dimensions cost 2 KiB, and Milvus Lite's memory
follows. The transform is fitted on the indexed vectors, streamed in batches (memory stays at one
4096 x 4096 matrix whatever the collection size), saved under a content-derived version in the data
dir, and applied to every stored vector and every query.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from imgwatch.errors import ImgwatchError
from imgwatch.services.abc import Extractor, ExtractorSignature, Vector
from imgwatch.services.cpu import cpus_we_may_run_on

PCA_DIMENSIONS = (256, 512)
#: Vectors read to fit a transform: more adds little to a 4096-d covariance and costs a full pass.
MAX_FIT_SAMPLES = 200_000


class NotEnoughSamplesError(ImgwatchError):
    def __init__(self, dimension: int, available: int) -> None:
        self.dimension = dimension
        self.available = available
        super().__init__(
            f"PCA to {dimension} dimensions is fitted on the indexed vectors and needs at least "
            f"{dimension} of them; the index has {available}. It keeps its full-size vectors until "
            "enough images are indexed (the daemon retries after each reconcile)."
        )


class TransformMissingError(ImgwatchError):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"the index was projected with the PCA transform {path}, which is missing or unreadable; "
            "restore it, or rebuild the index (`imgwatch index --rebuild ROOT...`)"
        )


@dataclass(frozen=True)
class PCATransform:
    """``y = x @ components``: the leading axes of the vectors' second-moment matrix, uncentred, and
    the result is *not* normalised again.

    Why not textbook PCA: searches rank by inner product, and ``x @ W @ W.T @ q`` is the best rank-d
    approximation of ``x . q`` only when the axes come from ``E[x x^T]``. Centring removes the large
    common component of the (all non-negative) fc7 activations, and re-normalising inflates vectors
    whose energy lies off the kept axes; both re-rank results. Measured on 1,300 generated photos
    (benchmarks/pca_recall.py, random weights), recall@10 against 4096-d for PCA-512: centred and
    re-normalised 0.55, uncentred and re-normalised 0.96, uncentred as is 0.97. Scores also stay
    close to the full-size cosine, so score thresholds keep their meaning.
    """

    components: npt.NDArray[np.float32]
    """``(source_dimension, dimension)``: the leading axes, largest second moment first."""
    samples: int
    energy: float
    """Share of the vectors' squared length that the kept axes hold (1.0 = nothing lost)."""

    @property
    def dimension(self) -> int:
        return int(self.components.shape[1])

    @property
    def source_dimension(self) -> int:
        return int(self.components.shape[0])

    @property
    def version(self) -> str:
        """Derived from the numbers themselves: equal versions project identically."""
        return hashlib.sha256(self.components.tobytes()).hexdigest()[:12]

    @classmethod
    def fit(cls, batches: Iterable[npt.NDArray[np.float32]], dimension: int) -> PCATransform:
        """Fit on vectors given in ``(n, d)`` batches (at most :data:`MAX_FIT_SAMPLES` are used)."""
        moment: npt.NDArray[np.float64] | None = None
        kept: list[npt.NDArray[np.float64]] | None = []
        count = 0
        # A process with a CPU model keeps numpy to one BLAS thread (extractor._use_the_cpus_we_may_run_on);
        # this is the one big matrix product it does, so let it use every CPU while it lasts.
        with threadpool_limits(limits=cpus_we_may_run_on(), user_api="blas"):
            for batch in batches:
                rows = np.asarray(batch, dtype=np.float64)[: MAX_FIT_SAMPLES - count]
                if moment is None:
                    moment = np.zeros((rows.shape[1], rows.shape[1]))
                moment += rows.T @ rows
                count += len(rows)
                # Fewer samples than dimensions: keep them for the cheaper fit below.
                kept = [*kept, rows] if kept is not None and count < rows.shape[1] else None
                if count >= MAX_FIT_SAMPLES:
                    break
            if moment is None or count < dimension:
                raise NotEnoughSamplesError(dimension, count)
            fitted = _fit_by_gram(np.concatenate(kept), dimension) if kept else None
            values, axes = fitted if fitted is not None else np.linalg.eigh(moment / count)  # ascending
        components = axes[:, ::-1][:, :dimension]
        # eigh's sign per axis is arbitrary; fix it so refits on the same data give the same version.
        signs = np.sign(components[np.argmax(np.abs(components), axis=0), np.arange(dimension)])
        energy = float(values[::-1][:dimension].sum() / max(values.sum(), 1e-12))
        return cls((components * signs).astype(np.float32), count, energy)

    def apply(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Project ``(n, source_dimension)`` vectors to ``(n, dimension)``."""
        projected: npt.NDArray[np.float32] = (np.asarray(vectors, dtype=np.float32) @ self.components).astype(
            np.float32
        )
        return projected

    def path_in(self, directory: Path) -> Path:
        return transform_path(directory, self.dimension, self.version)

    def save(self, directory: Path) -> Path:
        """Write atomically (temp file + rename): a crash never leaves a half-written transform."""
        path = self.path_in(directory)
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer, components=self.components, samples=np.int64(self.samples), energy=np.float64(self.energy)
        )
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".pca-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, directory: Path, dimension: int, version: str) -> PCATransform:
        path = transform_path(directory, dimension, version)
        try:
            with np.load(path, allow_pickle=False) as data:
                transform = cls(data["components"], int(data["samples"]), float(data["energy"]))
        except (OSError, ValueError, KeyError) as e:
            raise TransformMissingError(path) from e
        if transform.version != version:
            raise TransformMissingError(path)
        return transform


def transform_path(directory: Path, dimension: int, version: str) -> Path:
    return directory / f"pca-{dimension}-{version}.npz"


class ProjectedExtractor:
    """An extractor followed by a PCA transform. Does not own ``base``: closing it leaves ``base`` open,
    because the serving index and a reindex may share one model."""

    def __init__(self, base: Extractor, transform: PCATransform) -> None:
        if base.signature.dimension != transform.source_dimension:
            raise ImgwatchError(
                f"PCA transform expects {transform.source_dimension}-d vectors, "
                f"the extractor makes {base.signature.dimension}-d ones"
            )
        self.base = base
        self.transform = transform
        self._signature = base.signature.projected(transform.dimension, transform.version)

    @property
    def signature(self) -> ExtractorSignature:
        return self._signature

    @property
    def images_embedded(self) -> int:
        return self.base.images_embedded

    def embed(self, data: bytes) -> Vector:
        vector: Vector = self.transform.apply(self.base.embed(data)[None, :])[0]
        return vector

    def close(self) -> None:
        """Nothing of its own to release (see the class docstring)."""


def _fit_by_gram(
    rows: npt.NDArray[np.float64], dimension: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """The top ``dimension`` eigenpairs of ``XᵀX/n`` (ascending, as :func:`numpy.linalg.eigh` gives
    them) through the ``n x n`` Gram matrix ``XXᵀ/n`` when n < d: the same axes (to ~1e-14) for a far
    smaller eigenproblem (530 samples of 4096-d: 8 s instead of 77 s). None when the samples span
    fewer than ``dimension`` directions: the full problem handles that."""
    n = len(rows)
    values, vectors = np.linalg.eigh(rows @ rows.T / n)  # ascending
    top, basis = values[-dimension:], vectors[:, -dimension:]
    if top[0] <= 1e-12 * max(float(values[-1]), 1e-300):
        return None
    axes = rows.T @ basis / np.sqrt(n * top)
    # The eigenvalues left out (the other d - dimension) sum to the trace minus these: kept whole,
    # so the energy share below stays the fraction of the full trace.
    rest = float(np.trace(rows @ rows.T) / n - top.sum())
    return np.concatenate([[rest], top]), np.concatenate([np.zeros((rows.shape[1], 1)), axes], axis=1)
