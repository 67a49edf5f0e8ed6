"""The filesystem source: which paths count, how watchdog events become typed events, polling choice."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from imgwatch.events import (
    DirectoryCreated,
    DirectoryDeleted,
    DirectoryMoved,
    ImageCreated,
    ImageDeleted,
    ImageEvent,
    ImageModified,
    ImageMoved,
    RescanRequested,
    Source,
    paths_of,
)
from imgwatch.scan import ScanRules
from imgwatch.sources.fs import (
    EventTranslator,
    OverflowListener,
    PathFilter,
    filesystem_type,
    is_network_filesystem,
    watch_root,
)
from tests.conftest import write_photo

ROOT = "/photos"


FS = Source.FILESYSTEM


def _translate(event: object, rules: ScanRules | None = None) -> list[ImageEvent]:
    seen: list[ImageEvent] = []
    EventTranslator(PathFilter(ROOT, rules or ScanRules()), seen.append).on_any_event(event)  # type: ignore[arg-type]
    return seen


@pytest.mark.parametrize(
    ("path", "counts"),
    [
        ("/photos/a.jpg", True),
        ("/photos/deep/er/A.JPEG", True),
        ("/photos/a.txt", False),
        ("/photos/.hidden.jpg", False),
        ("/photos/.cache/a.jpg", False),
        ("/photos/a.jpg.part", False),
        ("/photos/a.jpg.crdownload", False),
        ("/photos/.~lock.a.jpg", False),
        ("/photos/a.tmp", False),
        ("/elsewhere/a.jpg", False),
    ],
)
def test_which_files_count(path: str, counts: bool) -> None:
    assert PathFilter(ROOT, ScanRules()).file_counts(path) is counts


def test_exclude_and_hidden_rules_apply_to_directories_too() -> None:
    rules = ScanRules(exclude=("raw",), include_hidden=True)
    paths = PathFilter(ROOT, rules)
    assert not paths.file_counts("/photos/raw/a.jpg")
    assert paths.file_counts("/photos/.cache/a.jpg")
    assert not paths.directory_counts("/photos/2024/raw")


def test_file_events_become_image_events() -> None:
    assert _translate(FileCreatedEvent("/photos/a.jpg")) == [ImageCreated("/photos/a.jpg", source=FS)]
    assert _translate(FileModifiedEvent("/photos/a.jpg")) == [ImageModified("/photos/a.jpg", source=FS)]
    [closed] = _translate(FileClosedEvent("/photos/a.jpg"))
    assert isinstance(closed, ImageModified) and closed.write_closed
    assert _translate(FileDeletedEvent("/photos/a.jpg")) == [ImageDeleted("/photos/a.jpg", source=FS)]
    assert _translate(FileMovedEvent("/photos/a.jpg", "/photos/b.jpg")) == [
        ImageMoved("/photos/a.jpg", "/photos/b.jpg", source=FS)
    ]
    assert _translate(FileOpenedEvent("/photos/a.jpg")) == []
    assert _translate(FileCreatedEvent("/photos/notes.txt")) == []


def test_temp_file_renamed_into_place_is_one_complete_new_file() -> None:
    assert _translate(FileCreatedEvent("/photos/a.jpg.part")) == []
    [created] = _translate(FileMovedEvent("/photos/a.jpg.part", "/photos/a.jpg"))
    assert created == ImageCreated("/photos/a.jpg", source=FS) and created.write_closed


def test_renaming_an_image_to_a_non_image_name_deletes_it() -> None:
    assert _translate(FileMovedEvent("/photos/a.jpg", "/photos/a.jpg.bak")) == [
        ImageDeleted("/photos/a.jpg", source=FS)
    ]


def test_directory_events() -> None:
    assert _translate(DirCreatedEvent("/photos/new")) == [DirectoryCreated("/photos/new", source=FS)]
    assert _translate(DirDeletedEvent("/photos/old")) == [DirectoryDeleted("/photos/old", source=FS)]
    assert _translate(DirMovedEvent("/photos/a", "/photos/b")) == [
        DirectoryMoved("/photos/a", "/photos/b", source=FS),
        DirectoryCreated("/photos/b", source=FS),
    ]
    assert _translate(DirMovedEvent("/photos/a", "/photos/.trash/a")) == [
        DirectoryDeleted("/photos/a", source=FS)
    ]
    assert _translate(DirMovedEvent("/photos/.incoming", "/photos/album")) == [
        DirectoryCreated("/photos/album", source=FS)
    ]


def test_synthetic_events_are_left_to_the_scan() -> None:
    assert _translate(FileMovedEvent("/photos/a/x.jpg", "/photos/b/x.jpg", is_synthetic=True)) == []


def test_filesystem_type_reads_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/nas rw,relatime shared:30 - nfs4 nas:/export rw,vers=4.2\n"
        "41 22 0:51 / /mnt/nas2 rw shared:31 - fuse.sshfs me@host:/ rw\n"
        "42 22 0:52 / /mnt/with\\040space rw shared:32 - cifs //srv/share rw\n"
        "43 22 0:53 / /mnt/Müller rw shared:33 - nfs4 srv:/m rw\n"
    )
    assert filesystem_type("/mnt/nas/photos", str(mountinfo)) == "nfs4"
    assert filesystem_type("/mnt/nas2", str(mountinfo)) == "fuse.sshfs"
    assert filesystem_type("/mnt/nasty", str(mountinfo)) == "ext4"
    assert filesystem_type("/mnt/with space/x", str(mountinfo)) == "cifs"
    assert filesystem_type("/home/me", str(mountinfo)) == "ext4"
    assert filesystem_type("/mnt/Müller/fotos", str(mountinfo)) == "nfs4"


@pytest.mark.parametrize(
    ("fs_type", "network"),
    [
        ("nfs4", True),
        ("cifs", True),
        ("fuse.sshfs", True),
        ("9p", True),
        ("ext4", False),
        ("btrfs", False),
        ("tmpfs", False),
        (None, False),
    ],
)
def test_network_filesystems_are_polled(fs_type: str | None, network: bool) -> None:
    assert is_network_filesystem(fs_type) is network


def test_this_machine_s_root_filesystem_is_known() -> None:
    assert filesystem_type("/") not in (None, "")


@pytest.mark.parametrize("force_poll", [False, True])
def test_a_real_watch_reports_changes(tmp_path: Path, force_poll: bool) -> None:
    seen: list[ImageEvent] = []
    (tmp_path / "sub").mkdir()
    watch = watch_root(str(tmp_path), ScanRules(), seen.append, force_poll=force_poll, poll_interval=0.2)
    moved = str(tmp_path / "sub" / "moved.jpg")

    def reported() -> bool:
        # inotify reports the rename itself; a poller may only see where things ended up.
        return any(moved in paths_of(e) for e in seen)

    try:
        assert watch.mode == ("polling (forced by configuration)" if force_poll else "inotify")
        write_photo(tmp_path / "new.jpg", seed=1)
        time.sleep(0.5)
        os.rename(tmp_path / "new.jpg", moved)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not reported():
            time.sleep(0.05)
    finally:
        watch.stop()
    assert reported(), seen
    if not force_poll:
        assert ImageMoved(str(tmp_path / "new.jpg"), moved, source=Source.FILESYSTEM) in seen
        assert any(isinstance(e, ImageModified) and e.write_closed for e in seen)


def test_an_inotify_queue_overflow_asks_for_a_rescan_of_every_root() -> None:
    seen: list[ImageEvent] = []
    listener = OverflowListener(["/a", "/b"], seen.append)
    inotify_log = logging.getLogger("watchdog.observers.inotify_c")
    inotify_log.addHandler(listener)
    try:
        inotify_log.warning("Inotify queue overflowed; filesystem events were lost")
        inotify_log.warning("something else")
    finally:
        inotify_log.removeHandler(listener)
    assert seen == [RescanRequested("/a", source=FS), RescanRequested("/b", source=FS)]
