"""A disk that fills up during ingest, for real: a small tmpfs in a private mount namespace holds the
data dir (catalog and Milvus Lite), or only Milvus Lite's files, and a ballast file fills it."""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from imgwatch.samples import photo
from tests.conftest import jpeg_bytes, write_photo
from tests.harness import RunningDaemon, disk_images, wait_until
from tests.namespaces import MountNamespace, mount_namespace

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

#: Roomy enough for an empty catalog and collection, filled up in a few milliseconds.
VOLUME_SIZE = "8m"
#: What SQLite and the OS say when the disk is full.
DISK_FULL = re.compile(r"database or disk is full|No space left on device")
RECORD_START = re.compile(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )")


@pytest.fixture
def namespace() -> Iterator[MountNamespace]:
    with mount_namespace() as space:
        yield space


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, bytes(1 << 16))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


def log_records(daemon: RunningDaemon) -> list[str]:
    """The daemon's log, one entry per record (a message may span lines: SQLAlchemy's errors do)."""
    return RECORD_START.split(daemon.log.read_text())


def retried_for_the_disk(daemon: RunningDaemon, images: list[str]) -> set[str]:
    """The images the daemon put back for a retry, saying that the disk was full."""
    retries = [r for r in log_records(daemon) if "retrying in" in r and DISK_FULL.search(r)]
    return {path for path in images if any(repr(path) in record for record in retries)}


def errors_logged(daemon: RunningDaemon) -> list[str]:
    return [record.splitlines()[0] for record in log_records(daemon) if " ERROR " in record][-5:]


@pytest.mark.parametrize("full", ["data dir", "vector store"])
def test_a_full_disk_is_survived_and_caught_up_by_itself(
    namespace: MountNamespace, tmp_path: Path, full: str
) -> None:
    data, root = tmp_path / "data", tmp_path / "photos"
    volume = data if full == "data dir" else data / "vectors.db"  # Milvus Lite's folder
    volume.mkdir(parents=True)
    root.mkdir()
    namespace.sh(f"mount -t tmpfs -o size={VOLUME_SIZE} tmpfs {volume}")
    # A file still being written is read once it has not changed for settle_seconds: time to fill the
    # disk after the daemon has taken its events in and before it handles them.
    daemon = namespace.start_daemon(data, root, env={"IMGWATCH_SETTLE_SECONDS": "3"})
    daemon.idle()
    writing: list[IO[bytes]] = []
    for seed in range(3):
        writing.append((root / f"early{seed}.jpg").open("wb"))
        writing[-1].write(jpeg_bytes(photo(5100 + seed, (64, 48))))
        writing[-1].flush()
    wait_until(lambda: daemon.status()["queue"]["waiting"] == 3)

    fill(namespace.path(volume / "ballast"))
    for file in writing:
        file.close()
    for seed in range(2):  # and these arrive on a full disk
        write_photo(root / f"late{seed}.jpg", seed=5200 + seed, size=(64, 48))
    images = sorted(disk_images(root))

    def each_met_the_full_disk() -> dict[str, Any] | None:
        status = daemon.status()  # the daemon is up and answers
        if "failed" in status["outcomes"]:  # the store's failure must not become the images'
            pytest.fail(f"an image was recorded as failed: {status}")
        return status if retried_for_the_disk(daemon, images) == set(images) else None

    try:
        wait_until(each_met_the_full_disk, timeout=120)
    except AssertionError:
        missing = sorted(set(images) - retried_for_the_disk(daemon, images))
        raise AssertionError(
            f"no retry for {missing}; status {daemon.status()}; last errors {errors_logged(daemon)}"
        ) from None
    assert daemon.status()["retries"] >= len(images)

    freed = time.monotonic()
    namespace.path(volume / "ballast").unlink()
    status = daemon.idle()  # by itself: no command
    log.info("%d files indexed %.1f s after space returned", len(images), time.monotonic() - freed)
    assert status["outcomes"].get("added") == len(images) and "failed" not in status["outcomes"]
    assert status["vectors"] == len(images)
    assert daemon.stop() == 0
    catalog = data / "catalog.sqlite3"
    check = f"import sqlite3; print(*sqlite3.connect({str(catalog)!r}).execute('PRAGMA integrity_check'))"
    assert namespace.python(check) == "('ok',)\n"
    namespace.assert_agree(data, root)  # one row and one entity per file, nothing else
