"""Roots on a filesystem that is unmounted while the daemon runs, for real: tmpfs mounts in a private
mount namespace, which the daemon runs in; its data dir stays on the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgwatch.services.abc import FileState
from imgwatch.services.catalog import SQLiteCatalog, create_sqlite_engine
from tests.conftest import write_photo
from tests.harness import RunningDaemon, imgwatch_cli, wait_until
from tests.namespaces import MountNamespace, mount_namespace

pytestmark = pytest.mark.slow


@pytest.fixture
def namespace() -> Iterator[MountNamespace]:
    with mount_namespace() as space:
        yield space


def indexed_paths(data_dir: Path, root: Path) -> list[str]:
    """The catalog's indexed rows under ``root``, read beside the running daemon."""
    catalog = SQLiteCatalog(create_sqlite_engine(data_dir / "catalog.sqlite3"))
    try:
        records = catalog.under(str(root))
        return sorted(r.path for r in records if r.state is FileState.INDEXED and r.has_vector)
    finally:
        catalog.close()


def guard_of(daemon: RunningDaemon) -> str | None:
    [root] = daemon.status()["roots"]
    guard: str | None = root["guard"]
    return guard


@pytest.mark.parametrize("layout", ["root is the mount point", "root inside the mount", "stale tree beneath"])
def test_an_unmounted_root_keeps_its_entries_and_comes_back_unchanged(
    namespace: MountNamespace, tmp_path: Path, layout: str
) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    root = mount if layout == "root is the mount point" else mount / "photos"
    originals = tmp_path / "originals"
    for seed in range(3):
        write_photo(originals / f"{seed}.jpg", seed=4100 + seed, size=(64, 48))
    if layout == "stale tree beneath":
        # The host sees the disk underneath the mount: a folder of the root's path, with other files,
        # left from before the filesystem was first mounted there.
        write_photo(root / "left-behind.jpg", seed=4199, size=(64, 48))
    namespace.sh(f"mount -t tmpfs -o size=16m tmpfs {mount}; mkdir -p {root}; cp {originals}/* {root}/")
    data = tmp_path / "data"
    data.mkdir()
    daemon = namespace.start_daemon(data, root)
    assert daemon.idle()["vectors"] == 3
    indexed = sorted(str(root / f"{seed}.jpg") for seed in range(3))
    assert indexed_paths(data, root) == indexed

    namespace.sh(f"umount {mount}")

    def guarded() -> dict[str, Any] | None:
        status = daemon.status()
        return status if status["roots"][0]["guard"] else None

    try:  # the daemon looks at its roots every 2 s: 30 s is fifteen looks, however busy the machine
        status = wait_until(guarded, timeout=30)
    except AssertionError:
        raise AssertionError(f"the unmount went unnoticed: {daemon.status()['roots']}") from None
    assert "not mounted" in status["roots"][0]["guard"]
    reindex = imgwatch_cli(data, "reindex", "--json")  # through the daemon: its reconcile job
    assert reindex.returncode == 0, reindex.stderr
    status = daemon.idle()
    assert status["vectors"] == 3
    assert sorted(daemon.paths_found(originals / "0.jpg")) == indexed
    assert indexed_paths(data, root) == indexed
    assert guard_of(daemon)
    runs = daemon.model_runs()  # searches run the model too

    # Mounted again with the same bytes: a fresh tmpfs, filled aside and moved into place whole, as
    # a disk comes back with all its files at once (new mtimes: only the bytes are the same).
    stage = tmp_path / "stage"
    stage.mkdir()
    inside = stage / root.relative_to(mount)
    namespace.sh(
        f"mount -t tmpfs -o size=16m tmpfs {stage}; mkdir -p {inside}; cp {originals}/* {inside}/; "
        f"mount --move {stage} {mount}"
    )
    try:
        wait_until(lambda: guard_of(daemon) is None, timeout=30)
    except AssertionError:
        raise AssertionError(f"the remount went unnoticed: {daemon.status()['roots']}") from None
    status = daemon.idle()
    assert status["model_runs"] == runs  # nothing extracted again
    assert status["vectors"] == 3
    assert indexed_paths(data, root) == indexed
    assert daemon.stop() == 0
    namespace.assert_agree(data, root)  # one row and one entity per file, nothing else
