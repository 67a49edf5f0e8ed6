"""``status``'s capacity rule: where a Milvus Lite collection stands against the limits measured
for it (imgwatch.capacity), and what it proposes next. The status itself is tested end to end in
tests/test_cli.py and tests/test_thin_client.py (from the daemon)."""

from __future__ import annotations

from pathlib import Path

from imgwatch.capacity import (
    PCA_AUTO_MIN,
    capacity,
    describe,
    lite_limits,
    machine_memory_bytes,
    pca_auto_threshold,
)

GIB = 2**30


def test_limits_grow_with_memory_and_shrink_with_the_dimension() -> None:
    small, big = lite_limits(4096, 8 * GIB), lite_limits(4096, 64 * GIB)
    assert 0 < small["memory"] < big["memory"]
    assert small["search"] == big["search"]  # search time does not depend on the memory
    assert lite_limits(512, 8 * GIB)["memory"] > 9 * small["memory"]  # 8.9 KiB a vector, not 87
    assert lite_limits(4096, 1 * GIB)["memory"] == 0  # the daemon alone takes more than 75 % of it


def test_a_4096_d_collection_near_its_limit_is_offered_pca_512_then_a_server() -> None:
    limit = min(lite_limits(4096, 24 * GIB).values())
    assert capacity(limit // 4, 4096, lite=True, memory_bytes=24 * GIB)["next"] is None  # type: ignore[index]
    near = capacity(limit - 1, 4096, lite=True, memory_bytes=24 * GIB)
    assert near is not None and near["next"].startswith("PCA-512")
    assert f"{near['vectors']:,} of about" in describe(near)
    at_512 = min(lite_limits(512, 24 * GIB).values())
    full = capacity(at_512, 512, lite=True, memory_bytes=24 * GIB)
    assert full is not None and full["next"].startswith("a Milvus server")
    # Past where even PCA-512 would be half full, PCA is not worth a reindex: a server is.
    huge = capacity(at_512, 4096, lite=True, memory_bytes=24 * GIB)
    assert huge is not None and huge["next"].startswith("a Milvus server")


def test_a_server_or_an_unknown_count_has_no_local_limit() -> None:
    assert capacity(10**6, 512, lite=False, memory_bytes=24 * GIB) is None
    assert capacity(None, 512, lite=True, memory_bytes=24 * GIB) is None


def test_this_machines_memory_is_read_from_the_kernel() -> None:
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert machine_memory_bytes() == total


def test_small_pca_dimensions_get_small_positive_costs() -> None:
    at_64, at_512 = lite_limits(64, 16 * GIB), lite_limits(512, 16 * GIB)
    assert at_64["memory"] > at_512["memory"] > 0
    assert at_64["memory"] < 10 * at_512["memory"]  # proportional below 512-d, no blow-up


def test_an_ann_index_lifts_the_search_bound_and_memory_then_bounds_it() -> None:
    flat, ann = lite_limits(4096, 24 * GIB), lite_limits(4096, 24 * GIB, ann=True)
    assert ann["search"] > 4 * flat["search"] and ann["memory"] == flat["memory"]
    report = capacity(100_000, 4096, lite=True, memory_bytes=24 * GIB, ann=True)
    assert report is not None and report["bound_by"] == "memory"


def test_pca_auto_applies_where_status_starts_to_propose_pca() -> None:
    for ann in (False, True):
        at = pca_auto_threshold(4096, 24 * GIB, ann=ann)
        assert at is not None
        before = capacity(at - 1, 4096, lite=True, memory_bytes=24 * GIB, ann=ann)
        there = capacity(at, 4096, lite=True, memory_bytes=24 * GIB, ann=ann)
        assert before is not None and before["next"] is None
        assert there is not None and there["next"].startswith("PCA-512")
        assert "`pca = auto` to have it applied by itself" in there["next"]
    # Already 512-d or smaller: nothing for it to do.
    assert pca_auto_threshold(512, 24 * GIB, ann=True) is None
    # A machine too small for the daemon itself has no room for vectors at all: auto still waits for
    # enough vectors to fit a PCA-512 worth keeping (it never goes back).
    assert lite_limits(4096, 2 * GIB)["memory"] == 0
    assert pca_auto_threshold(4096, 2 * GIB, ann=True) == PCA_AUTO_MIN == 5_120
    # On 24 GiB, 4096-d on an ANN index: half of the ~190,000 that fit in memory.
    assert 80_000 < pca_auto_threshold(4096, 24 * GIB, ann=True) < 110_000  # type: ignore[operator]


def test_status_with_pca_auto_says_when_it_will_project() -> None:
    at = pca_auto_threshold(4096, 24 * GIB, ann=True)
    assert at is not None
    below = capacity(1_000, 4096, lite=True, memory_bytes=24 * GIB, ann=True, pca_auto=True)
    assert below is not None and below["pca_auto_at"] == at
    assert describe(below).endswith(f"pca = auto: PCA-512 from {at:,} vectors")
    given = capacity(
        1_000, 4096, lite=True, memory_bytes=24 * GIB, ann=True, pca_auto=True, pca_auto_at=5_000
    )
    assert given is not None and given["pca_auto_at"] == 5_000
    there = capacity(at, 4096, lite=True, memory_bytes=24 * GIB, ann=True, pca_auto=True)
    assert there is not None and f"`pca = auto` applies it at {at:,} vectors" in there["next"]
