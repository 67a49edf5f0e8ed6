"""Polled roots through the real CLI: ``--poll``, ``poll_roots`` from the config file or the environment,
and a file still being written on a polled root."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgwatch.config import Settings
from imgwatch.samples import photo
from imgwatch.services.abc import content_hash
from imgwatch.services.build import open_context
from tests.conftest import jpeg_bytes, write_photo
from tests.harness import RunningDaemon, assert_agree, wait_until

pytestmark = pytest.mark.slow

FORCED = "polling (forced by configuration)"


def _watch_modes(daemon: RunningDaemon) -> dict[str, str | None]:
    return {root["path"]: root["watch"] for root in daemon.status()["roots"]}


def test_poll_polls_every_root_and_a_file_still_being_written_is_read_once_complete(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    write_photo(root / "start.jpg", seed=1, size=(64, 48))
    # settle_seconds 3: the writer's pauses (0.5 s) stay well below it however loaded the machine.
    daemon = daemon_factory(
        root, extra=("--poll", "--poll-interval", "0.5"), env={"IMGWATCH_SETTLE_SECONDS": "3"}
    )
    assert _watch_modes(daemon) == {str(root): FORCED}
    before = daemon.idle()

    # Written in place, in six chunks over about six poll intervals, by a writer that keeps it open.
    data = jpeg_bytes(photo(2, (320, 240)))
    slow = root / "slow.jpg"
    chunk = len(data) // 6 + 1
    with slow.open("wb") as f:
        for start in range(0, len(data), chunk):
            f.write(data[start : start + chunk])
            f.flush()
            time.sleep(0.5)
    status = daemon.idle()  # no searches until then: each would run the model on its query too

    assert status["model_runs"] == before["model_runs"] + 1
    assert status["outcomes"] == {"added": before["outcomes"]["added"] + 1}, status["outcomes"]
    assert daemon.stop() == 0
    with open_context(Settings(data_dir=daemon.data_dir, weights="random:0"), command="test") as ctx:
        record = ctx.catalog.get(str(slow))
        assert record is not None
        assert (record.size, record.mtime_ns) == (len(data), slow.stat().st_mtime_ns)
        assert record.content_hash == content_hash(data)
    assert_agree(daemon.data_dir, root)


def test_poll_roots_from_the_config_file_polls_those_roots_only(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    """poll_roots from the config file, poll_interval from the environment: both through the CLI's
    settings, in one daemon start (each costs a VGG16 load)."""
    photos = tmp_path / "photos"
    polled, watched = photos / "nas", photos / "local"
    polled.mkdir(parents=True)
    watched.mkdir()
    data_dir = tmp_path / "data"
    config = data_dir / "cfg" / "imgwatch" / "config.toml"  # under the harness's XDG_CONFIG_HOME
    config.parent.mkdir(parents=True)
    config.write_text(f"poll_roots = [{json.dumps(str(polled))}]\n")
    daemon = daemon_factory(polled, watched, data_dir=data_dir, env={"IMGWATCH_POLL_INTERVAL": "0.5"})

    assert _watch_modes(daemon) == {str(polled): FORCED, str(watched): "inotify"}
    assert "every 0.5 s: forced by configuration" in daemon.log.read_text()
    dropped = [
        write_photo(folder / "sub" / "dropped.jpg", seed=10 + seed, size=(64, 48))
        for seed, folder in enumerate((polled, watched))
    ]
    wait_until(lambda: all(str(path) in daemon.paths_found(path, k=3) for path in dropped), timeout=120)

    assert daemon.stop() == 0
    assert_agree(daemon.data_dir, photos)
