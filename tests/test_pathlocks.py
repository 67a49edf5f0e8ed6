"""One handler per path at a time, whoever dispatches: real threads, real stores, real VGG16."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from imgwatch import jobs
from imgwatch.context import Context
from imgwatch.events import ImageModified, Outcome, Source
from imgwatch.pathlocks import PathLocks, is_under, overlap
from imgwatch.runtime import dispatch
from tests.conftest import write_photo


def test_names_under_a_directory() -> None:
    assert is_under("/a/b/c.jpg", "/a/b")
    assert not is_under("/a/bc.jpg", "/a/b")
    assert overlap(["/x/y.jpg"], ["/q", "/x"])
    assert not overlap(["/x/y.jpg"], ["/x/z.jpg"])


def _holds_while(locks: PathLocks, first: list[str], second: list[str]) -> bool:
    """Whether a second thread asking for ``second`` got in while this thread held ``first``."""
    got_in = threading.Event()

    def other() -> None:
        with locks.hold(second):
            got_in.set()

    with locks.hold(first):
        thread = threading.Thread(target=other)
        thread.start()
        entered = got_in.wait(0.3)
    thread.join(5)
    assert got_in.is_set(), "the waiting thread never got in after the holder left"
    return entered


def test_a_held_path_keeps_others_out_until_it_is_released() -> None:
    locks = PathLocks()
    assert not _holds_while(locks, ["/r/a.jpg"], ["/r/a.jpg"])
    assert not _holds_while(locks, ["/r/dir"], ["/r/dir/a.jpg"])  # a directory covers its files
    assert not _holds_while(locks, ["/r/dir/a.jpg"], ["/r/dir"])
    assert _holds_while(locks, ["/r/a.jpg"], ["/r/b.jpg"])  # unrelated paths do not wait


def test_the_holding_thread_may_hold_again() -> None:
    locks = PathLocks()
    with locks.hold(["/r/a.jpg", "/r/a.jpg"]), locks.hold(["/r/a.jpg"]):
        assert not locks.busy(["/r/a.jpg"])  # not busy for the holder itself
    assert not _holds_while(locks, ["/r/a.jpg"], ["/r/a.jpg"])  # and fully released after


def test_two_threads_handling_one_file_extract_it_once(ctx: Context, tmp_path: Path) -> None:
    """`imgwatch index` sent to the daemon and the daemon's own handler can get the same file at
    the same moment: the second must wait for the first, then find nothing to do."""
    path = write_photo(tmp_path / "root" / "a.jpg", seed=3, size=(96, 72))
    runs = ctx.extractor.images_embedded
    start = threading.Barrier(2)
    outcomes: list[Outcome] = []

    def handle() -> None:
        start.wait()
        outcomes.append(dispatch(ImageModified(str(path), source=Source.SCAN), ctx))

    threads = [threading.Thread(target=handle) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(outcomes) == sorted([Outcome.ADDED, Outcome.UNCHANGED])
    assert ctx.extractor.images_embedded == runs + 1
    assert ctx.vectors.count() == 1


def test_a_failed_re_extraction_is_not_counted_as_restored(ctx: Context, tmp_path: Path) -> None:
    path = write_photo(tmp_path / "root" / "a.jpg", seed=4, size=(96, 72))
    assert dispatch(ImageModified(str(path), source=Source.SCAN), ctx) is Outcome.ADDED
    record = ctx.catalog.get(str(path))
    assert record is not None
    ctx.vectors.delete([record.id])
    # The bytes rot in place (same size, same mtime): the repair's re-extraction cannot decode them.
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    counts = jobs.repair_vectors(ctx)

    assert counts["vectors_re_extracted"] == 0
    assert counts["vectors_restored"] == 0
    assert counts["vectors_not_restored"] == 1


def test_a_repair_waits_for_the_handler_holding_its_path(ctx: Context, tmp_path: Path) -> None:
    """A vector that goes missing while its file is being handled is not extracted twice."""
    path = write_photo(tmp_path / "root" / "a.jpg", seed=5, size=(96, 72))
    assert dispatch(ImageModified(str(path), source=Source.SCAN), ctx) is Outcome.ADDED
    record = ctx.catalog.get(str(path))
    assert record is not None
    ctx.vectors.delete([record.id])
    repaired: dict[str, int] = {}
    with ctx.paths.hold([str(path)]):
        thread = threading.Thread(target=lambda: repaired.update(jobs.repair_vectors(ctx)))
        thread.start()
        time.sleep(0.3)
        assert not repaired, "the repair went ahead while another thread held the path"
        # The holder (a handler, say) restores the vector itself meanwhile.
        assert dispatch(ImageModified(str(path), source=Source.SCAN), ctx) is Outcome.UNCHANGED
        ctx.vectors.upsert([(record.id, record.path, ctx.extractor.embed(path.read_bytes()))])
    thread.join(120)
    assert repaired["vectors_re_extracted"] == 0
    assert ctx.vectors.count() == 1
