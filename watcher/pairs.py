"""Every pair of vectors that scores at least a threshold: blocked all-pairs inner products in numpy.

The vectors of a pass are written once to an unlinked temporary file (float32 rows, in the order they
were appended) and read back a block at a time into two buffers this module owns. A row block is
multiplied with every column block at or after it (``A @ B.T``, one BLAS call each), and only the
pairs at or above the threshold leave numpy (``np.nonzero``). The working memory is the two blocks and
one block of scores, whatever the number of vectors: about 100 MiB at 4096-d.

The file is read with ``pread`` rather than memory-mapped: pages of a mapping count in the process's
resident set once touched (the whole collection, by the end of a pass), while ``pread`` leaves them in
the kernel's page cache, which the kernel reclaims under pressure.

float32, not float16: half precision halves the file but moves a cosine by up to 4e-5 at 4096-d and
1e-4 at 512-d (docs/notes-dupscale.md), enough to move a pair across the threshold, and the pass must
find what a search of the vector store finds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

#: Rows multiplied at a time; a block holds whole batches, so it may be larger when a batch is.
ROWS_PER_BLOCK = 2048
#: Columns multiplied at a time.
COLUMNS_PER_BLOCK = 4096


@dataclass(frozen=True)
class BlockPairs:
    """The pairs found for one row block: ``first[i] < second[i]`` are row numbers in the file."""

    scores: npt.NDArray[np.float32]
    first: npt.NDArray[np.int64]
    second: npt.NDArray[np.int64]


class VectorFile:
    """Vectors appended in batches to an unlinked temporary file; their keys stay in memory (8 bytes
    each). The file vanishes when closed, or when the process dies."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self._keys: list[int] = []
        self._batch_starts: list[int] = []
        self.dimension = 0

    def __enter__(self) -> VectorFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> Sequence[int]:
        return self._keys

    @property
    def batch_starts(self) -> Sequence[int]:
        """The row number each appended batch starts at."""
        return self._batch_starts

    def append(self, keys: Sequence[int], vectors: npt.ArrayLike) -> None:
        """One batch: ``vectors[i]`` is the vector of ``keys[i]``."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        if not keys:
            return
        if rows.ndim != 2 or len(rows) != len(keys):
            raise ValueError(f"{len(keys)} keys but vectors of shape {rows.shape}")
        if self.dimension and rows.shape[1] != self.dimension:
            raise ValueError(f"vectors of dimension {rows.shape[1]} after {self.dimension}")
        self.dimension = rows.shape[1]
        self._batch_starts.append(len(self._keys))
        self._file.write(rows.data)
        self._keys.extend(keys)

    def read(self, start: int, stop: int, buffer: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Rows ``start:stop`` into the front of ``buffer``; returns that view."""
        self._file.flush()
        out = buffer[: stop - start]
        view = memoryview(out.data).cast("B")
        offset, done = start * self.dimension * 4, 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from the pass's vector file at byte {offset + done}")
            done += got
        return out

    def row_blocks(self, rows: int = ROWS_PER_BLOCK) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of consecutive whole batches, about ``rows`` rows each (one batch at least)."""
        ends = [*self._batch_starts[1:], len(self)]
        start = 0
        for index, end in enumerate(ends):
            if index + 1 == len(ends) or ends[index + 1] - start > rows:
                yield start, end
                start = end


def close_pairs(
    vectors: VectorFile,
    threshold: float,
    *,
    rows: int | None = None,
    columns: int | None = None,
) -> Iterator[tuple[int, int, BlockPairs]]:
    """For each row block ``(start, stop)``, the pairs ``(i, j)``, ``start <= i < stop``, ``i < j``,
    whose inner product is at least ``threshold``. Each pair is found once, in the block of ``i``.
    ``rows`` and ``columns`` default to :data:`ROWS_PER_BLOCK` and :data:`COLUMNS_PER_BLOCK`."""
    rows, columns = rows or ROWS_PER_BLOCK, columns or COLUMNS_PER_BLOCK
    n, dimension = len(vectors), vectors.dimension
    if not n:
        return
    left = np.empty((max(b - a for a, b in vectors.row_blocks(rows)), dimension), np.float32)
    right = np.empty((min(columns, n), dimension), np.float32)
    for start, stop in vectors.row_blocks(rows):
        block = vectors.read(start, stop, left)
        found: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        for first_column in range(start, n, columns):
            other = vectors.read(first_column, min(first_column + columns, n), right)
            scores = block @ other.T
            i, j = np.nonzero(scores >= threshold)
            i, j = i + start, j + first_column
            later = j > i  # the block against itself: each pair once, no vector with itself
            i, j = i[later], j[later]
            found.append((scores[i - start, j - first_column], i.astype(np.int64), j.astype(np.int64)))
        yield start, stop, BlockPairs(*(np.concatenate(parts) for parts in zip(*found, strict=True)))
