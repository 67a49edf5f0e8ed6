"""Near-duplicate groups over the real stores: planted copies are found, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imgwatch import duplicates
from imgwatch.context import Context
from imgwatch.duplicates import find_duplicates
from imgwatch.samples import photo
from tests.conftest import index, jpeg_bytes

# Seeded random weights score unrelated scenes up to about 0.96 and copies above 0.99; real
# ImageNet weights separate them far more, where the CLI's default of 0.95 applies.
THRESHOLD = 0.99


def _copies(root: Path, seed: int, kinds: list[str]) -> set[str]:
    original = photo(seed, (480, 360))
    paths = {str(root / f"scene{seed}.jpg")}
    for kind in kinds:
        if kind == "resized":
            data = jpeg_bytes(original.resize((240, 180), Image.Resampling.LANCZOS))
        elif kind == "small":
            data = jpeg_bytes(original.resize((160, 120), Image.Resampling.LANCZOS), quality=70)
        else:  # re-encoded at a lower JPEG quality
            data = jpeg_bytes(original, quality=int(kind.removeprefix("q")))
        target = root / "copies" / f"scene{seed}-{kind}.jpg"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        paths.add(str(target))
    return paths


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, list[set[str]]]:
    """Ten distinct scenes; three of them with resized / re-encoded copies (groups of 5, 3 and 2)."""
    root = tmp_path / "library"
    root.mkdir()
    for seed in range(10):
        (root / f"scene{seed}.jpg").write_bytes(jpeg_bytes(photo(seed, (480, 360))))
    groups = [
        _copies(root, 7, ["resized", "small", "q40", "q25"]),
        _copies(root, 1, ["resized", "q30"]),
        _copies(root, 4, ["small"]),
    ]
    return root, groups


def test_planted_groups_are_found_and_nothing_else(
    ctx: Context, planted: tuple[Path, list[set[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, expected = planted
    index(ctx, root)
    # Batches of 3 make the pass span several batches; a first limit of 2 neighbours is smaller than
    # the group of 5, so its members must be asked again with a larger limit to find it whole.
    monkeypatch.setattr(duplicates, "FIRST_LIMIT", 2)

    groups = find_duplicates(ctx, threshold=THRESHOLD, batch_size=3)

    assert [set(g.paths) for g in groups] == expected  # largest first
    for group in groups:
        assert group.paths == sorted(group.paths)
        assert THRESHOLD <= group.max_score <= 1.0 + 1e-5


def test_the_pass_runs_no_model_and_skips_files_the_catalog_does_not_vouch_for(
    ctx: Context, planted: tuple[Path, list[set[str]]]
) -> None:
    root, expected = planted
    index(ctx, root)
    dropped = ctx.catalog.get(str(root / "copies" / "scene4-small.jpg"))
    assert dropped is not None
    ctx.catalog.delete(dropped.id)  # its vector stays behind in Milvus, an orphan
    before = ctx.extractor.images_embedded

    groups = find_duplicates(ctx, threshold=THRESHOLD)

    assert ctx.extractor.images_embedded == before
    assert [set(g.paths) for g in groups] == expected[:2]


def test_a_threshold_outside_the_cosine_range_is_refused(ctx: Context) -> None:
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(ctx, threshold=1.5)
