"""The filesystem source: which paths count, how watchdog events become typed events, polling choice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
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
    Source,
    paths_of,
)
from imgwatch.scan import ScanRules
from imgwatch.sources.fs import (
    EventTranslator,
    PathFilter,
    filesystem_type,
    is_network_filesystem,
    watch_root,
)
from tests.conftest import REPO, write_photo
from tests.harness import wait_until
from tests.kernel_limits import need_root, need_user_namespace, nested_tree

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


# ---- the kernel's limits, for real: a watcher process of its own, which the test can stop ----------

#: A process that watches ``argv[1]`` as the daemon does (``watch_root`` inside ``overflow_rescans``)
#: and prints what it sees as JSON lines. ``argv[2]``: inotify's queue size for its instance, or 0;
#: ``argv[3]``: its inotify watch limit, or 0 (it runs in a user namespace of its own for that).
#: Commands on stdin: ``mode`` (print the watch's mode), ``cap`` (the watch limit = the watches held
#: now), ``quit``.
WATCHER = """
import contextlib, json, os, sys, threading
from imgwatch.scan import ScanRules
from imgwatch.sources.fs import overflow_rescans, watch_root
from tests.kernel_limits import inotify_watches, sysctl_lowered

root, queue, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
def say(**fields):
    with lock:
        print(json.dumps(fields), flush=True)
def seen(event):
    say(event=type(event).__name__, path=event.path)
def watches_limit(n):
    with open("/proc/sys/user/max_inotify_watches", "w") as f:
        f.write(str(n))
if limit:
    watches_limit(limit)
with overflow_rescans([root], seen):
    # Only an instance made while the sysctl is lowered gets the small queue: lowered for this call.
    lowered = sysctl_lowered("fs.inotify.max_queued_events", queue) if queue else contextlib.nullcontext()
    with lowered:
        watch = watch_root(root, ScanRules(), seen, poll_interval=0.2)
    say(mode=watch.mode)
    for command in sys.stdin:
        if command.strip() == "mode":
            say(mode=watch.mode)
        elif command.strip() == "cap":
            watches_limit(inotify_watches(os.getpid()))
            say(capped=True)
        else:
            break
    watch.stop()
"""


class Watcher:
    """The WATCHER process, and what it printed."""

    def __init__(self, root: Path, *, queue: int = 0, limit: int = 0) -> None:
        wrapper = ["unshare", "-U", "-r"] if limit else []
        self.process = subprocess.Popen(
            [*wrapper, sys.executable, "-c", WATCHER, str(root), str(queue), str(limit)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, **fields: str) -> None:
        """Until the watcher printed a line with ``fields`` (inotify and polling take a moment)."""
        try:
            wait_until(lambda: any(fields.items() <= line.items() for line in self.lines), timeout=60)
        except AssertionError:
            raise AssertionError(f"the watcher never said {fields}; it said {self.lines}") from None

    def command(self, command: str, answer: str) -> dict[str, str]:
        count = len(self.lines)
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        reply: dict[str, str] = wait_until(
            lambda: next((x for x in self.lines[count:] if answer in x), None), timeout=60
        )
        return reply

    def events(self, kind: str) -> list[str]:
        return [line["path"] for line in self.lines if line.get("event") == kind]

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def test_an_overflow_of_inotify_s_queue_renews_the_watch_and_asks_for_one_rescan(tmp_path: Path) -> None:
    """A real IN_Q_OVERFLOW: the watcher is stopped (SIGSTOP, as a busy machine would leave it
    unscheduled) while a burst fills its 8-event queue. watchdog alone would rebuild its watches in a
    loop for ever (its rebuild's own events overflow the queue again) and report nothing more."""
    need_root()
    root = tmp_path / "root"
    folders = nested_tree(root, width=6, depth=5)
    watcher = Watcher(root, queue=8)
    try:
        watcher.wait_for(mode="inotify")
        watcher.process.send_signal(signal.SIGSTOP)
        try:
            for n in range(40):  # ~120 events
                (folders[n % len(folders)] / f"burst{n}.jpg").write_bytes(b"x")
        finally:
            watcher.process.send_signal(signal.SIGCONT)
        watcher.wait_for(event="RescanRequested", path=str(root))

        # The renewed watch sees the whole tree again, down to its deepest folder.
        deep = folders[-1] / "after.jpg"
        write_photo(deep, seed=1)
        watcher.wait_for(event="ImageModified", path=str(deep))
        assert watcher.command("mode", "mode") == {"mode": "inotify"}
    finally:
        watcher.close()
    assert watcher.events("RescanRequested") == [str(root)]


def test_a_tree_beyond_the_watch_limit_is_polled(tmp_path: Path) -> None:
    """The watcher's inotify watch limit (its user namespace's, so no other process on the machine
    is affected) allows the root and a few folders, not the tree's 31: watchdog would skip the rest
    in silence."""
    need_user_namespace()
    root = tmp_path / "root"
    folders = nested_tree(root, width=6, depth=5)
    watcher = Watcher(root, limit=10)
    try:
        watcher.wait_for(mode="polling (inotify watch limit reached)")
        deep = write_photo(folders[-1] / "deep.jpg", seed=1)
        watcher.wait_for(event="ImageCreated", path=str(deep))
    finally:
        watcher.close()


def test_a_folder_beyond_the_watch_limit_later_switches_the_root_to_polling(tmp_path: Path) -> None:
    """The tree grows past the limit while watched: the new folder cannot get a watch, so the root
    is watched anew (by polling now) and rescanned; a file in that folder is found."""
    need_user_namespace()
    root = tmp_path / "root"
    folders = nested_tree(root, width=2, depth=3)
    watcher = Watcher(root, limit=1000)
    try:
        watcher.wait_for(mode="inotify")
        watcher.command("cap", "capped")
        new = folders[-1] / "new"
        new.mkdir()
        watcher.wait_for(event="RescanRequested", path=str(root))
        assert watcher.command("mode", "mode") == {"mode": "polling (inotify watch limit reached)"}
        photo = write_photo(new / "grown.jpg", seed=2)
        watcher.wait_for(event="ImageCreated", path=str(photo))
    finally:
        watcher.close()
    assert watcher.events("RescanRequested") == [str(root)]
