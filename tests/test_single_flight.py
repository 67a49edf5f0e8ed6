"""One model run per content: copies of a new image in flight together share one extraction, in
``imgwatch index`` and in the daemon (issue 17)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from imgwatch.config import Settings
from imgwatch.services.abc import FileState
from imgwatch.services.build import open_context
from imgwatch.services.extractor import VGG16Extractor
from imgwatch.services.single_flight import SingleFlight
from tests.conftest import write_photo
from tests.harness import RunningDaemon, assert_agree, cli_env, wait_until

CONTENTS = 3
COPIES = 10
"""30 files: 3 contents, each in 10 folders."""


def _copies(root: Path, seeds: range = range(300, 300 + CONTENTS)) -> dict[int, list[Path]]:
    """``COPIES`` files of each content, written at once: the first from a photo, the rest copied."""
    staging = root.parent / f"{root.name}-originals"
    originals = {seed: write_photo(staging / f"c{seed}.jpg", seed, size=(64, 48)) for seed in seeds}
    copies: dict[int, list[Path]] = {}
    for seed, original in originals.items():
        copies[seed] = []
        for k in range(COPIES):
            target = root / f"folder{k}" / f"c{seed}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(original, target)
            copies[seed].append(target)
    return copies


def _index_json(data_dir: Path, root: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "imgwatch", "index", str(root), "--json"],
        env=cli_env(data_dir),
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def _assert_right_vectors(data_dir: Path, copies: dict[int, list[Path]], model: VGG16Extractor) -> None:
    """Every copy holds the model's vector of its bytes (all copies of a content the same one)."""
    with open_context(Settings(data_dir=data_dir, weights="random:0"), command="test", model=False) as ctx:
        for files in copies.values():
            records = [ctx.catalog.get(str(path)) for path in files]
            assert all(r is not None and r.state is FileState.INDEXED for r in records)
            stored = ctx.vectors.get_vectors(r.id for r in records if r is not None)
            vectors: list[npt.NDArray[np.float32]] = list(stored.values())
            assert len(vectors) == COPIES
            assert all(np.array_equal(v, vectors[0]) for v in vectors)  # one shared run
            expected = model.embed(files[0].read_bytes())
            assert float(np.dot(vectors[0], expected)) > 0.9999


# ---- the service itself, with real threads ------------------------------------------------------


@pytest.fixture
def followers() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(timeout=30)


Results = list[str | BaseException]
"""What each follower got: the value, or the exception."""


def _start_waiters(
    flights: SingleFlight[str], key: str, count: int, results: Results, threads: list[threading.Thread]
) -> None:
    def follow() -> None:
        try:
            with flights.shared(key, lambda: "computed by a follower") as value:
                results.append(value)
        except Exception as e:  # noqa: BLE001 - the test looks at what each caller got
            results.append(e)

    for _ in range(count):
        thread = threading.Thread(target=follow, name="imgwatch-test-follower")
        threads.append(thread)
        thread.start()


def test_callers_that_overlap_share_the_leaders_result(followers: list[threading.Thread]) -> None:
    flights: SingleFlight[str] = SingleFlight()
    results: Results = []

    def compute() -> str:
        _start_waiters(flights, "k", 5, results, followers)
        wait_until(lambda: flights.joined == 5)  # every follower waits on this flight
        return "computed by the leader"

    with flights.shared("k", compute) as value:
        # The leader's block (where it stores the result) still holds the key: a newcomer joins.
        wait_until(lambda: len(results) == 5)
        with flights.shared("k", lambda: "computed again") as late:
            assert late == "computed by the leader"
    for thread in followers:
        thread.join(timeout=30)

    assert value == "computed by the leader"
    assert results == ["computed by the leader"] * 5
    assert (flights.computed, flights.joined, flights.in_flight()) == (1, 6, 0)
    with flights.shared("k", lambda: "a new flight") as after:  # released: the next caller computes
        assert after == "a new flight"


def test_a_failed_run_fails_every_waiter_with_its_error_and_frees_the_key(
    followers: list[threading.Thread],
) -> None:
    flights: SingleFlight[str] = SingleFlight()
    results: Results = []

    def compute() -> str:
        _start_waiters(flights, "k", 4, results, followers)
        wait_until(lambda: flights.joined == 4)
        raise ValueError("cannot decode")

    with pytest.raises(ValueError, match="cannot decode"), flights.shared("k", compute):
        pytest.fail("the block runs only with a result")
    for thread in followers:
        thread.join(timeout=30)

    assert [str(r) for r in results] == ["cannot decode"] * 4
    assert all(isinstance(r, ValueError) for r in results)
    assert (flights.computed, flights.in_flight()) == (1, 0)


# ---- through the real command and the real daemon -----------------------------------------------


def test_copies_in_one_index_run_cost_one_model_run_per_content(
    tmp_path: Path, extractor: VGG16Extractor
) -> None:
    root = tmp_path / "photos"
    copies = _copies(root)

    summary = _index_json(tmp_path / "data", root)

    assert (summary["added"], summary["failed"]) == (CONTENTS * COPIES, 0)
    assert summary["model_runs"] == CONTENTS
    assert_agree(tmp_path / "data", root)
    _assert_right_vectors(tmp_path / "data", copies, extractor)


def test_copies_of_a_corrupt_file_all_fail_with_the_same_reason(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for k in range(8):
        (root / f"folder{k}").mkdir(parents=True)
        (root / f"folder{k}" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG " * 50)

    summary = _index_json(tmp_path / "data", root)

    # The decoding fails before the model: it is not even loaded.
    assert (summary["added"], summary["failed"], summary["model_runs"]) == (0, 8, 0)
    failures = summary["failures"]
    assert isinstance(failures, list) and len(failures) == 8
    assert len({f["error"] for f in failures}) == 1
    settings = Settings(data_dir=tmp_path / "data", weights="random:0")
    with open_context(settings, command="test", model=False) as ctx:
        records = list(ctx.catalog.under(str(root)))
        assert ctx.catalog.counts()[FileState.PENDING] == 0
        broken = [r for r in records if r.path.endswith("broken.jpg")]
        assert len(broken) == 8
        assert all(r.state is FileState.FAILED and not r.has_vector for r in broken)
        assert {r.error for r in broken} == {failures[0]["error"]}
        assert ctx.vectors.count() == 0


@pytest.mark.slow
def test_copies_created_at_once_under_the_daemon_cost_one_model_run_per_content(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path, extractor: VGG16Extractor
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    daemon = daemon_factory(root)
    assert daemon.idle()["model_runs"] == 0

    copies = _copies(root)
    status = daemon.idle()

    assert status["model_runs"] == CONTENTS
    assert status["outcomes"].get("added") == CONTENTS * COPIES
    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, root)
    _assert_right_vectors(daemon.data_dir, copies, extractor)
