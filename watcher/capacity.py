"""Where a collection stands against the limits of its engine, for ``status``.

Milvus Lite keeps every vector in the daemon's memory and searches in Python over every entity, so a
library outgrows it by memory or by search time. The figures are measured
(``benchmarks/search_latency.py``, 2026-11-27, 2 cores of an AMD EPYC, FLAT index, the daemon's peak
RSS and Milvus Lite's own search time at 10,000 and 100,000 vectors):

=========  ===================  ==================  ==================
dimension  daemon RSS at 10k    at 100k             store search, 100k
=========  ===================  ==================  ==================
4096       2,473 MiB            10,154 MiB          0.43 s
512        1,688 MiB            2,467 MiB           0.14 s
=========  ===================  ==================  ==================

That is ~1.6 GiB for the daemon itself (model, runtime) plus 87 KiB per 4096-d vector and 8.9 KiB
per 512-d one (Lite's copies of each vector and its keys: FLAT copies what it scans), and a search
time linear in the count. Other dimensions are interpolated linearly. A Milvus server keeps its
vectors in its own memory, so no local limit is given for one.

With an ANN index (``index_type = auto`` moves a collection to IVF_FLAT past ``exact_search_up_to``)
the search stays linear but ~5x cheaper: what is left is Lite's walk over every key in Python
(``benchmarks/index_types.py``, 2026-12-02: IVF_FLAT 89 ms at 100,000 512-d vectors, 28 ms at 30,000
4096-d ones, on 2 shared cores; memory as FLAT's or less).
"""

from __future__ import annotations

import math
import os
from typing import Any

#: Daemon memory besides the vectors (MiB), and memory per vector (KiB) by dimension, measured.
BASE_MIB = 1610
KIB_PER_VECTOR = {512: 8.9, 4096: 87.4}
#: Milvus Lite's search time per 100,000 vectors (s), by dimension, measured: FLAT, and an ANN index.
SEARCH_S_PER_100K = {512: 0.14, 4096: 0.43}
ANN_SEARCH_S_PER_100K = {512: 0.089, 4096: 0.093}
#: The share of the machine's memory the vectors may take: the rest is for everything else it runs.
MEMORY_SHARE = 0.75
#: The search time a library should stay under on Milvus Lite.
SEARCH_BUDGET_S = 0.5
#: From this share of a limit on, ``status`` says what to do next.
WARN_SHARE = 0.5
#: What ``status`` proposes, and ``pca = auto`` applies, when full-size vectors no longer fit well.
PCA_DIMENSION = 512
#: The fewest vectors ``pca = auto`` projects by itself: a PCA-512 fitted on barely 512 vectors would
#: stay the index's for good (auto never goes back), so it waits for ten per dimension.
PCA_AUTO_MIN = 10 * PCA_DIMENSION


def _by_dimension(table: dict[int, float], dimension: int) -> float:
    (low, at_low), (high, at_high) = sorted(table.items())
    if dimension < low:  # a line through the two points would go negative below ~100-d
        return at_low * dimension / low
    return at_low + (at_high - at_low) * (dimension - low) / (high - low)


def machine_memory_bytes() -> int | None:
    """This machine's memory (MemTotal), or None where /proc/meminfo cannot say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def lite_limits(dimension: int, memory_bytes: int, *, ann: bool = False) -> dict[str, int]:
    """How many ``dimension``-d vectors Milvus Lite holds here: within :data:`MEMORY_SHARE` of the
    machine's memory, and within :data:`SEARCH_BUDGET_S` per search (FLAT, or an ``ann`` index)."""
    spare_kib = (memory_bytes * MEMORY_SHARE) / 1024 - BASE_MIB * 1024
    by_memory = max(0, int(spare_kib / _by_dimension(KIB_PER_VECTOR, dimension)))
    per_100k = _by_dimension(ANN_SEARCH_S_PER_100K if ann else SEARCH_S_PER_100K, dimension)
    by_search = int(SEARCH_BUDGET_S / per_100k * 100_000)
    return {"memory": by_memory, "search": by_search}


def pca_auto_threshold(dimension: int, memory_bytes: int, *, ann: bool) -> int | None:
    """The count of ``dimension``-d vectors from which Milvus Lite no longer holds them comfortably
    here (:data:`WARN_SHARE` of its limit, memory or search time, whichever comes first): where
    ``status`` starts to propose PCA-512, and where ``pca = auto`` applies it, but never below
    :data:`PCA_AUTO_MIN` (on a machine too small for the daemon itself, the limit is 0). None for
    vectors of 512 dimensions or fewer (nothing to gain)."""
    if dimension <= PCA_DIMENSION:
        return None
    limit = min(lite_limits(dimension, memory_bytes, ann=ann).values())
    return max(PCA_AUTO_MIN, math.ceil(WARN_SHARE * limit))


def capacity(
    vectors: int | None,
    dimension: int,
    *,
    lite: bool,
    memory_bytes: int | None,
    ann: bool = False,
    pca_auto: bool = False,
    pca_auto_at: int | None = None,
) -> dict[str, Any] | None:
    """``status``'s capacity report for a collection of ``vectors`` ``dimension``-d vectors (in an
    ``ann`` index or FLAT), or None for a server (its memory is not this machine's) or where the count
    or the memory is unknown."""
    if not lite or vectors is None or memory_bytes is None:
        return None
    limits = lite_limits(dimension, memory_bytes, ann=ann)
    bound = "memory" if limits["memory"] <= limits["search"] else "search"
    limit = limits[bound]
    report: dict[str, Any] = {
        "engine": "Milvus Lite",
        "vectors": vectors,
        "dimension": dimension,
        "limit": limit,
        "bound_by": bound,
        "limits": limits,
        "memory_bytes": memory_bytes,
        "next": None,
    }
    threshold = pca_auto_threshold(dimension, memory_bytes, ann=ann)
    if pca_auto and threshold is not None:
        report["pca_auto_at"] = pca_auto_at or threshold
    if vectors >= WARN_SHARE * limit:
        at_512 = lite_limits(PCA_DIMENSION, memory_bytes, ann=ann)
        if threshold is not None and vectors < WARN_SHARE * min(at_512.values()):
            how = (
                f"`pca = auto` applies it at {report['pca_auto_at']:,} vectors"
                if pca_auto
                else "`pca = 512` in the config, or `pca = auto` to have it applied by itself"
            )
            report["next"] = (
                f"PCA-512 ({how}; a shadow reindex with no model run) holds about "
                f"{_roughly(min(at_512.values())):,} vectors here; or a Milvus server "
                "(`imgwatch migrate --to URI`)"
            )
        else:
            report["next"] = (
                "a Milvus server: `imgwatch migrate --to URI` moves the index without re-extraction"
            )
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for the terminal."""
    reason = (
        f"that fit in {MEMORY_SHARE:.0%} of this machine's {report['memory_bytes'] / 2**30:.0f} GiB"
        if report["bound_by"] == "memory"
        else f"that it searches within {SEARCH_BUDGET_S} s"
    )
    line = (
        f"{report['engine']}: {report['vectors']:,} of about {_roughly(report['limit']):,} "
        f"{report['dimension']}-d vectors {reason}"
    )
    if report["next"]:
        return f"{line}; next: {report['next']}"
    if "pca_auto_at" in report:
        return f"{line}; pca = auto: PCA-512 from {report['pca_auto_at']:,} vectors"
    return line


def _roughly(n: int) -> int:
    """``n`` to two significant digits: the limits are estimates."""
    return round(n, 2 - len(str(n))) if n >= 100 else n


def add_capacity(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (``status``'s) with its ``capacity``, once it has its vector count."""
    extractor = report.get("extractor")
    index = report.get("ann_index") or {}
    report["capacity"] = capacity(
        report.get("vectors"),
        extractor["dimension"] if extractor else 4096,
        lite=report.get("engine") == "Milvus Lite",
        memory_bytes=machine_memory_bytes(),
        ann=index.get("type", "FLAT") != "FLAT",
        pca_auto=report.get("pca", {}).get("setting") == "auto",
        pca_auto_at=report.get("pca", {}).get("auto_at"),
    )
    return report
