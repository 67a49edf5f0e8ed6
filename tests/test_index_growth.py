"""``index_type = auto``: exact search while a collection is small, an ANN index (IVF_FLAT) once it grows,
and back when it shrinks far enough; the move is a shadow copy of the stored vectors, with no model run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgwatch.config import Settings
from imgwatch.reindex import REBUILD_FACTOR, wanted_index, wanted_pca
from imgwatch.reindex_steps import step_dimension
from imgwatch.services.abc import ExtractorSignature
from tests.conftest import write_photo
from tests.harness import RunningDaemon, imgwatch_cli, wait_progressing

FLAT: dict[str, Any] = {"type": "FLAT", "params": {}}
#: What auto moves a collection of 8 to 1,001 vectors to: 4 * sqrt(N) lists, at least 16.
IVF_8: dict[str, Any] = {"type": "IVF_FLAT", "params": {"nlist": 16}}
IVF_1001: dict[str, Any] = {"type": "IVF_FLAT", "params": {"nlist": 127}}


def test_auto_moves_to_ivf_past_the_bar_and_back_only_well_below_it(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, exact_search_up_to=1_000)
    assert settings.index_type == "AUTO"
    assert Settings(data_dir=tmp_path).exact_search_up_to == 20_000

    assert wanted_index(settings, FLAT, 1_000) == FLAT
    assert wanted_index(settings, FLAT, 1_001) == IVF_1001
    # A collection that shrinks a little below the bar keeps its index: no rebuild back and forth.
    assert wanted_index(settings, IVF_1001, 1_000 // REBUILD_FACTOR) == IVF_1001
    assert wanted_index(settings, IVF_1001, 1_000 // REBUILD_FACTOR - 1) == FLAT
    # Its lists follow the size, rebuilt when 2x off: 4,000 lists for a million vectors.
    assert wanted_index(settings, IVF_1001, 3_000) == IVF_1001
    assert wanted_index(settings, IVF_1001, 1_000_000) == {"type": "IVF_FLAT", "params": {"nlist": 4000}}
    # A server trains an index per segment (~233,000 PCA-512 rows, ~32,000 at 4096-d): its lists are
    # sized for a segment, and stop growing with the collection there.
    server = settings.replace(milvus_uri="unix:/run/milvus.sock")
    assert wanted_index(server, IVF_1001, 1_000_000, dimension=512) == {
        "type": "IVF_FLAT",
        "params": {"nlist": 1931},
    }
    assert wanted_index(server, IVF_1001, 1_000_000, dimension=4096)["params"] == {"nlist": 718}
    assert wanted_index(server, IVF_1001, 3_000, dimension=512) == IVF_1001
    # An explicit type is obeyed at any size.
    assert wanted_index(settings.replace(index_type="flat"), FLAT, 10**6) == FLAT
    # A collection shared with other watchers keeps its index: one watcher may not replace it.
    assert wanted_index(settings.replace(node="camera-pc"), FLAT, 10**6) == FLAT


def test_pca_auto_never_replaces_a_shared_collection() -> None:
    full = ExtractorSignature("torchvision.vgg16", "random:0", "fc7", "v1", 4096, "fp32")
    auto = Settings(pca="auto", pca_auto_at=600)
    assert wanted_pca(auto, full, FLAT, 600) == 512
    assert wanted_pca(auto, full, FLAT, 599) is None
    assert wanted_pca(auto.replace(node="camera-pc"), full, FLAT, 10**6) is None
    assert wanted_pca(auto.replace(pca=256), full, FLAT, 0) == 256  # an explicit size is obeyed


def test_a_server_sizes_the_lists_for_the_vectors_the_next_step_stores() -> None:
    # Turning PCA-512 off re-extracts 4096-d vectors: their lists are sized for 4096-d segments, or
    # the next check would find them 2.7x off and rebuild the collection once more.
    full = ExtractorSignature("torchvision.vgg16", "random:0", "fc7", "v1", 4096, "fp32")
    projected = ExtractorSignature("torchvision.vgg16", "random:0", "fc7", "v1", 512, "fp32", "4096->512:abc")
    assert step_dimension(projected, full, None) == 4096  # PCA turned off: extraction
    assert step_dimension(projected, full, 256) == 4096  # another PCA size: extraction first
    assert step_dimension(full, full, 512) == 512  # PCA turned on: projection
    assert step_dimension(projected, full, 512) == 512  # nothing but the index changes
    assert step_dimension(full, full, None) == 4096


def _ann_index(data_dir: Path) -> dict[str, Any]:
    report = json.loads(imgwatch_cli(data_dir, "status", "--json").stdout)
    return dict(report["ann_index"])


def _moved(daemon: RunningDaemon, want: str) -> Callable[[], bool]:
    """Asks the daemon to compact (after a maintenance job it checks for a pending reindex), then
    whether its index has become ``want``."""

    def check() -> bool:
        if _ann_index(daemon.data_dir)["type"] == want:
            return True
        imgwatch_cli(daemon.data_dir, "compact")
        return False

    return check


@pytest.mark.slow
def test_a_growing_collection_moves_to_ivf_by_itself_without_a_model_run(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    photos = [root / f"{seed:02d}.jpg" for seed in range(8)]
    for seed, path in enumerate(photos[:4]):
        write_photo(path, seed, (64, 48))
    daemon = daemon_factory(root, env={"IMGWATCH_EXACT_SEARCH_UP_TO": "5"})
    assert daemon.idle()["vectors"] == 4
    imgwatch_cli(daemon.data_dir, "compact")
    assert _ann_index(daemon.data_dir) == FLAT

    for seed, path in enumerate(photos[4:], start=4):
        write_photo(path, seed, (64, 48))
    grown = daemon.idle()
    assert grown["vectors"] == 8
    runs = grown["model_runs"]

    wait_progressing(_moved(daemon, "IVF_FLAT"), lambda: daemon.status()["reindex"], interval=0.5)

    status = daemon.idle()
    assert _ann_index(daemon.data_dir) == IVF_8
    assert status["model_runs"] == runs, "the move copies the stored vectors"
    assert status["vectors"] == 8
    assert status["reindex"]["mode"] == "copy"
    for path in photos:
        assert daemon.paths_found(path, k=1) == [str(path)]

    # Shrunk to 2 (below 5 / 2): back to exact search. At 3 it would have stayed.
    for path in photos[2:]:
        path.unlink()
    assert daemon.idle()["vectors"] == 2
    wait_progressing(_moved(daemon, "FLAT"), lambda: daemon.status()["reindex"], interval=0.5)
    assert daemon.paths_found(photos[0], k=1) == [str(photos[0])]
    assert daemon.stop() == 0
