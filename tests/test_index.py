"""``index`` keeps the catalog and Milvus in line with the folders, running the model only when needed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgwatch.context import Context
from imgwatch.events import ImageCreated, ImageDeleted, ImageMoved, Outcome
from imgwatch.runtime import dispatch
from imgwatch.samples import photo
from imgwatch.scan import ScanRules
from imgwatch.search import search_files
from imgwatch.services.abc import FileState
from tests.conftest import OpenContext, index, jpeg_bytes, write_photo


def _model_runs(ctx: Context) -> int:
    return ctx.extractor.images_embedded


def _indexed_paths(ctx: Context, root: Path) -> set[str]:
    return {r.path for r in ctx.catalog.under(str(root)) if r.state is FileState.INDEXED}


def _assert_consistent(ctx: Context, root: Path) -> None:
    """Catalog and Milvus agree: one entity per indexed file, under the file's row id."""
    records = [r for r in ctx.catalog.under(str(root)) if r.has_vector]
    assert ctx.vectors.count() == len(records)
    assert set(ctx.vectors.get_vectors(r.id for r in records)) == {r.id for r in records}


def test_first_index_adds_every_photo(ctx: Context, photos: Path) -> None:
    summary = index(ctx, photos)

    assert (summary.added, summary.failed, summary.unchanged) == (8, 0, 0)
    assert len(_indexed_paths(ctx, photos)) == 8
    _assert_consistent(ctx, photos)


def test_unchanged_folder_runs_the_model_zero_times(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    before = _model_runs(ctx)

    summary = index(ctx, photos)

    assert _model_runs(ctx) == before
    assert summary.unchanged == 8
    assert summary.added == summary.updated == summary.moved == summary.removed == summary.failed == 0


def test_touched_file_with_same_content_is_not_re_extracted(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    target = photos / "photo1.jpg"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    before = _model_runs(ctx)

    summary = index(ctx, photos)

    assert _model_runs(ctx) == before
    assert summary.unchanged == 8
    assert ctx.catalog.get(str(target)).mtime_ns == 1_000_000_000  # type: ignore[union-attr]


def test_changed_content_is_re_extracted_once_under_the_same_key(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    target = photos / "photo1.jpg"
    key = ctx.catalog.get(str(target)).id  # type: ignore[union-attr]
    write_photo(target, seed=99)
    before = _model_runs(ctx)

    summary = index(ctx, photos)

    assert (summary.updated, summary.unchanged) == (1, 7)
    assert _model_runs(ctx) == before + 1
    assert ctx.catalog.get(str(target)).id == key  # type: ignore[union-attr]
    query = photos.parent / "q.jpg"
    query.write_bytes(jpeg_bytes(photo(99)))
    assert search_files([str(query)], ctx, k=1)[0].matches[0].path == str(target)
    _assert_consistent(ctx, photos)


def test_deleted_file_disappears_from_results(ctx: Context, photos: Path, tmp_path: Path) -> None:
    index(ctx, photos)
    query = tmp_path / "query.jpg"
    shutil.copy(photos / "photo3.jpg", query)
    assert search_files([str(query)], ctx, k=1)[0].matches[0].path == str(photos / "photo3.jpg")

    (photos / "photo3.jpg").unlink()
    summary = index(ctx, photos)

    assert summary.removed == 1
    paths = [m.path for m in search_files([str(query)], ctx, k=10)[0].matches]
    assert str(photos / "photo3.jpg") not in paths
    assert len(paths) == 7
    _assert_consistent(ctx, photos)


def test_deleted_directory_removes_everything_under_it(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    shutil.rmtree(photos / "trip")

    summary = index(ctx, photos)

    assert summary.removed == 2
    assert _indexed_paths(ctx, photos) == {str(photos / f"photo{i}.jpg") for i in range(6)}
    _assert_consistent(ctx, photos)


def test_moved_file_keeps_its_vector_without_a_model_run(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    old, new = photos / "photo2.jpg", photos / "trip" / "renamed 2.jpg"
    record = ctx.catalog.get(str(old))
    assert record is not None
    vector = ctx.vectors.get_vectors([record.id])[record.id]
    before = _model_runs(ctx)

    old.rename(new)
    summary = index(ctx, photos)

    assert (summary.moved, summary.added, summary.removed) == (1, 0, 0)
    assert _model_runs(ctx) == before
    moved = ctx.catalog.get(str(new))
    assert moved is not None and moved.id == record.id and ctx.catalog.get(str(old)) is None
    np.testing.assert_array_equal(ctx.vectors.get_vectors([record.id])[record.id], vector)
    [hit] = search_files([str(new)], ctx, k=1)[0].matches
    assert hit.path == str(new)
    _assert_consistent(ctx, photos)


def test_renamed_directory_moves_every_file_without_model_runs(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    before = _model_runs(ctx)

    (photos / "trip").rename(photos / "holiday")
    summary = index(ctx, photos)

    assert (summary.moved, summary.added, summary.removed) == (2, 0, 0)
    assert _model_runs(ctx) == before
    assert str(photos / "holiday" / "photo7.jpg") in _indexed_paths(ctx, photos)


def test_move_between_two_roots_is_a_move(ctx: Context, photos: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    index(ctx, photos, other)
    before = _model_runs(ctx)

    (photos / "photo0.jpg").rename(other / "photo0.jpg")
    summary = index(ctx, photos, other)

    assert (summary.moved, summary.added, summary.removed) == (1, 0, 0)
    assert _model_runs(ctx) == before


def test_copy_of_an_indexed_file_reuses_its_vector(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    before = _model_runs(ctx)

    shutil.copy(photos / "photo4.jpg", photos / "photo4 copy.jpg")
    summary = index(ctx, photos)

    assert summary.added == 1
    assert _model_runs(ctx) == before
    original, copy = (
        ctx.catalog.get(str(photos / "photo4.jpg")),
        ctx.catalog.get(str(photos / "photo4 copy.jpg")),
    )
    assert original and copy and original.id != copy.id
    vectors = ctx.vectors.get_vectors([original.id, copy.id])
    np.testing.assert_array_equal(vectors[original.id], vectors[copy.id])


def test_index_only_touches_the_roots_it_is_given(ctx: Context, photos: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_photo(elsewhere / "kept.jpg", seed=40)
    index(ctx, elsewhere)

    index(ctx, photos)

    assert _indexed_paths(ctx, elsewhere) == {str(elsewhere / "kept.jpg")}
    # A sibling whose name starts like the root is not "under" it.
    write_photo(tmp_path / "photos-extra" / "x.jpg", seed=41)
    index(ctx, tmp_path / "photos-extra")
    shutil.rmtree(photos)
    photos.mkdir()
    index(ctx, photos)
    assert _indexed_paths(ctx, tmp_path / "photos-extra") == {str(tmp_path / "photos-extra" / "x.jpg")}


ODD_NAMES = [
    "it's.jpg",
    'say "cheese".jpg',
    "back\\slash.jpg",
    "new\nline.jpg",
    "emoji 😀🏖.jpg",
    "tab\tand  spaces .jpg",
    "ünïcødé-名前.jpg",
    "percent %s {} $HOME `x`.jpg",
]


def test_odd_file_names_index_search_move_and_delete(ctx: Context, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    names = [*ODD_NAMES, os.fsdecode(b"latin1-\xe9t\xe9.jpg")]
    for seed, name in enumerate(names):
        (root / name).write_bytes(jpeg_bytes(photo(200 + seed)))

    summary = index(ctx, root)

    assert (summary.added, summary.failed) == (len(names), 0)
    for name in names:
        [result] = search_files([str(root / name)], ctx, k=1)
        assert result.matches[0].path == str(root / name), name
        assert result.matches[0].score == pytest.approx(1.0, abs=1e-3)
        assert ctx.vectors.ids_for_path(str(root / name)) == [ctx.catalog.get(str(root / name)).id]  # type: ignore[union-attr]

    (root / names[1]).rename(root / 'renamed "again" \\ \' .jpg')
    for name in names[2:]:
        (root / name).unlink()
    summary = index(ctx, root)

    assert (summary.moved, summary.removed) == (1, len(names) - 2)
    assert _indexed_paths(ctx, root) == {str(root / names[0]), str(root / 'renamed "again" \\ \' .jpg')}
    _assert_consistent(ctx, root)


def test_non_utf8_name_round_trips_as_surrogate_escapes(ctx: Context, tmp_path: Path) -> None:
    root = tmp_path / "bytes"
    root.mkdir()
    raw = os.path.join(os.fsencode(root), b"caf\xe9-\xff.jpg")
    with open(raw, "wb") as f:
        f.write(jpeg_bytes(photo(300)))

    index(ctx, root)

    expected = os.fsdecode(raw)
    assert "\udce9" in expected and "\ufffd" not in expected
    assert _indexed_paths(ctx, root) == {expected}
    assert search_files([expected], ctx, k=1)[0].matches[0].path == expected


def test_symlinked_file_is_indexed_under_the_link_path(ctx: Context, photos: Path, tmp_path: Path) -> None:
    outside = write_photo(tmp_path / "outside" / "real.jpg", seed=50)
    (photos / "link.jpg").symlink_to(outside)

    index(ctx, photos)

    assert str(photos / "link.jpg") in _indexed_paths(ctx, photos)


def test_symlinked_directories_are_followed_only_when_configured(
    ctx: Context, photos: Path, tmp_path: Path
) -> None:
    write_photo(tmp_path / "outside" / "deep" / "x.jpg", seed=51)
    (photos / "linked").symlink_to(tmp_path / "outside")
    (photos / "trip" / "loop").symlink_to(photos)  # would recurse forever without loop detection

    assert index(ctx, photos).added == 8

    summary = index(ctx, photos, rules=ScanRules(follow_symlinks=True))

    assert summary.added == 1
    assert str(photos / "linked" / "deep" / "x.jpg") in _indexed_paths(ctx, photos)


def test_a_file_turned_into_a_symlink_loop_is_failed_not_removed(ctx: Context, photos: Path) -> None:
    """stat() says ELOOP, not ENOENT: something is there that cannot be followed, like a broken link."""
    index(ctx, photos)
    looped = photos / "photo1.jpg"
    looped.unlink()
    looped.symlink_to(looped.name)  # a link to itself

    summary = index(ctx, photos)

    assert (summary.removed, summary.failed) == (0, 1)
    assert summary.failures == [(str(looped), "symbolic link loop (too many levels of symbolic links)")]
    record = ctx.catalog.get(str(looped))
    assert record is not None and record.state is FileState.FAILED
    # A deletion reported for it (by a watcher) does not remove it either: it is not known to be gone.
    assert dispatch(ImageDeleted(str(looped)), ctx) is Outcome.UNCHANGED
    assert ctx.catalog.get(str(looped)) is not None
    assert index(ctx, photos).removed == 0


def test_directory_named_like_an_image_is_a_directory(ctx: Context, photos: Path) -> None:
    write_photo(photos / "album.jpg" / "inside.jpg", seed=52)

    summary = index(ctx, photos)

    assert summary.failed == 0
    assert str(photos / "album.jpg" / "inside.jpg") in _indexed_paths(ctx, photos)


def test_extensions_are_case_insensitive_and_format_comes_from_content(ctx: Context, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    image = photo(60)
    image.save(root / "upper.JPG", "JPEG")
    image.save(root / "png-named.jpeg", "PNG")  # a PNG behind a JPEG name still decodes
    image.save(root / "a.WebP", "WEBP")
    image.save(root / "b.GIF", "GIF")
    image.save(root / "c.bmp", "BMP")
    image.save(root / "d.TIFF", "TIFF")
    (root / "notes.txt").write_text("not an image, not even looked at")

    summary = index(ctx, root)

    assert (summary.added, summary.failed) == (6, 0)


def test_hidden_files_and_excluded_patterns_are_skipped(ctx: Context, photos: Path) -> None:
    write_photo(photos / ".hidden.jpg", seed=70)
    write_photo(photos / ".cache" / "thumb.jpg", seed=71)
    write_photo(photos / "raw" / "skip.jpg", seed=72)

    summary = index(ctx, photos, rules=ScanRules(exclude=("raw",)))
    assert summary.added == 8

    summary = index(ctx, photos, rules=ScanRules(include_hidden=True, include=("*.jpg",), exclude=("raw",)))
    assert summary.added == 2


def test_handlers_are_idempotent(ctx: Context, photos: Path) -> None:
    index(ctx, photos)
    src, dest = str(photos / "photo1.jpg"), str(photos / "moved.jpg")
    os.rename(src, dest)

    assert dispatch(ImageMoved(src, dest), ctx) is Outcome.MOVED
    assert dispatch(ImageMoved(src, dest), ctx) in (Outcome.UNCHANGED,)
    assert dispatch(ImageCreated(dest), ctx) is Outcome.UNCHANGED
    os.remove(dest)
    assert dispatch(ImageDeleted(dest), ctx) is Outcome.REMOVED
    assert dispatch(ImageDeleted(dest), ctx) is Outcome.UNCHANGED
    _assert_consistent(ctx, photos)
    assert index(ctx, photos).unchanged == 7


def test_interrupted_work_is_finished_without_duplicates(ctx: Context, photos: Path) -> None:
    """A crash after the vector was written but before the row said so: the redo reuses the key."""
    target = photos / "photo5.jpg"
    record = ctx.catalog.mark_pending(str(target), 0, 0)
    blob = ctx.files.read(str(target))
    ctx.vectors.upsert([(record.id, str(target), ctx.extractor.embed(blob.data))])  # ...and then "crash"

    summary = index(ctx, photos)

    assert summary.added == 8
    assert ctx.catalog.get(str(target)).id == record.id  # type: ignore[union-attr]
    _assert_consistent(ctx, photos)


def test_state_survives_reopening(open_ctx: OpenContext, photos: Path) -> None:
    with open_ctx() as ctx:
        index(ctx, photos)
        before = _model_runs(ctx)
    with open_ctx() as ctx:
        summary = index(ctx, photos)
        assert summary.unchanged == 8 and _model_runs(ctx) == before
        assert search_files([str(photos / "photo0.jpg")], ctx, k=1)[0].matches[0].path == str(
            photos / "photo0.jpg"
        )
        _assert_consistent(ctx, photos)


def test_moved_identical_copies_keep_their_own_mtimes(ctx: Context, tmp_path: Path) -> None:
    # Byte-identical copies with different mtimes, as a photo library's duplicates are: each moved
    # file must be paired with its own row, or the row would keep another copy's mtime and every
    # later scan would see the file as changed.
    root = tmp_path / "photos"
    data = jpeg_bytes(photo(3, (96, 72)))
    for i in range(6):
        copy = root / "old" / f"copy{i}.jpg"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(data)
        os.utime(copy, ns=(1_600_000_000_000_000_000 + i * 10**9, 1_600_000_000_000_000_000 + i * 10**9))
    index(ctx, root)

    (root / "new").mkdir()
    for i in range(6):  # renamed too: only the mtime says which row each file was
        (root / "old" / f"copy{i}.jpg").rename(root / "new" / f"renamed{5 - i}.jpg")
    moved = index(ctx, root)

    assert (moved.moved, moved.added, moved.removed) == (6, 0, 0)
    # Each row as its file is (a later scan would otherwise hash all of them again).
    for path in (root / "new").iterdir():
        record = ctx.catalog.get(str(path))
        assert record is not None and record.mtime_ns == path.stat().st_mtime_ns, path.name


def test_moved_identical_copies_with_one_mtime_keep_their_rows_by_name(ctx: Context, tmp_path: Path) -> None:
    # Copies made in one go share an mtime; a move keeps the names, so each row (its id, and
    # what hangs on it: verdicts, the review history) follows the file of the same name.
    root = tmp_path / "photos"
    data = jpeg_bytes(photo(4, (96, 72)))
    (root / "old").mkdir(parents=True)
    for i in range(6):
        copy = root / "old" / f"copy{i}.jpg"
        copy.write_bytes(data)
        os.utime(copy, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    index(ctx, root)
    ids = {f"copy{i}.jpg": ctx.catalog.get(str(root / "old" / f"copy{i}.jpg")).id for i in range(6)}  # type: ignore[union-attr]
    assert len(set(ids.values())) == 6

    for i in range(6):  # into folders that list them in the reverse order: only the name pairs them
        (root / "new" / f"sub{5 - i}").mkdir(parents=True)
        (root / "old" / f"copy{i}.jpg").rename(root / "new" / f"sub{5 - i}" / f"copy{i}.jpg")
    moved = index(ctx, root)

    assert (moved.moved, moved.added, moved.removed) == (6, 0, 0)
    after = {
        f"copy{i}.jpg": ctx.catalog.get(str(root / "new" / f"sub{5 - i}" / f"copy{i}.jpg")).id
        for i in range(6)
    }  # type: ignore[union-attr]
    assert after == ids
