"""The int8 compile cache keeps the packages of the few most recently used keys (issue 16).

``prune_packages`` is tested on real files in a real directory, aged with ``os.utime``; then once
through ``load_or_build`` with a real AOTInductor package: of a tiny convolutional model, since a
VGG16 package costs a minute or more to quantize and compile on 2 cores (tests/test_int8.py builds
one, in a module fixture that another module cannot share), and what is tested here, the cache's
housekeeping, does not depend on the model's size.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from imgwatch.services.int8 import (
    KEEP_KEYS,
    PRUNE_GRACE_S,
    Int8Model,
    Int8UnavailableError,
    load_or_build,
    photo_crops,
    prune_packages,
)

HOUR = 3600.0


def _key(cache: Path, n: int, *, age_s: float, used_s: float | None = None, record_only: bool = False) -> str:
    """A key's package (some bytes) and record, written ``age_s`` ago and last read ``used_s`` ago."""
    digest = f"{n:016x}"
    now = time.time()
    for suffix in (".json",) if record_only else (".pt2", ".json"):
        path = cache / f"vgg16-int8-{digest}{suffix}"
        path.write_bytes(os.urandom(4096 if suffix == ".pt2" else 64))
        written = now - age_s
        os.utime(path, (written if used_s is None else now - used_s, written))
    return digest


def _digests(cache: Path) -> set[str]:
    """The keys with a package or a record in ``cache`` (by exact name)."""
    named = (re.fullmatch(r"vgg16-int8-(\w+)\.(?:pt2|json)", p.name) for p in cache.iterdir())
    return {match[1] for match in named if match}


def test_only_the_most_recently_used_keys_and_the_new_one_stay(tmp_path: Path) -> None:
    new = _key(tmp_path, 100, age_s=0)
    old = [_key(tmp_path, i, age_s=(i + 1) * 24 * HOUR) for i in range(5)]  # old[0] the most recent
    refusal = _key(tmp_path, 200, age_s=30 * 24 * HOUR, record_only=True)
    # Not ours: other names, a compile's temporary file, a record's temporary file, a symlink.
    strangers = [
        tmp_path / "notes.txt",
        tmp_path / "vgg16-int8-xyz.pt2",
        tmp_path / f"vgg16-int8-{old[4]}.pt2.bak",
        tmp_path / f".vgg16-int8-{old[4]}.pt2.k3j2h1.pt2",
        tmp_path / f".vgg16-int8-{old[4]}.json.123.tmp",
    ]
    for path in strangers:
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 90 * 24 * HOUR,) * 2)
    link = tmp_path / f"vgg16-int8-{300:016x}.pt2"
    link.symlink_to(strangers[0])

    removed = prune_packages(tmp_path, new)

    assert KEEP_KEYS == 3
    assert _digests(tmp_path) == {new, old[0], old[1], f"{300:016x}", "xyz"}
    assert {p.name for p in removed} == {
        f"vgg16-int8-{digest}{suffix}" for digest in old[2:] for suffix in (".pt2", ".json")
    } | {f"vgg16-int8-{refusal}.json"}
    assert all(p.exists() for p in strangers) and link.is_symlink()
    # Both files of a kept key stay.
    assert (tmp_path / f"vgg16-int8-{old[1]}.pt2").is_file()
    assert (tmp_path / f"vgg16-int8-{old[1]}.json").is_file()
    # A second prune has nothing left to do.
    assert prune_packages(tmp_path, new) == []


def test_a_key_used_or_written_within_the_grace_period_is_spared(tmp_path: Path) -> None:
    new = _key(tmp_path, 100, age_s=0)
    # More keys than KEEP_KEYS were used lately (machines sharing the data dir): the least recent of
    # them is beyond the count, but within the grace period another process may be about to load it.
    in_use = _key(tmp_path, 50, age_s=7 * 24 * HOUR, used_s=60)  # built long ago, started a minute ago
    concurrent = _key(tmp_path, 51, age_s=5 * 60)  # just written by a process with another key
    oldest_recent = _key(tmp_path, 52, age_s=PRUNE_GRACE_S - 120)
    stale = [_key(tmp_path, 53, age_s=PRUNE_GRACE_S + 120), _key(tmp_path, 54, age_s=HOUR)]

    removed = prune_packages(tmp_path, new)

    assert {p.name for p in removed} == {
        f"vgg16-int8-{digest}{suffix}" for digest in stale for suffix in (".pt2", ".json")
    }
    assert _digests(tmp_path) == {new, in_use, concurrent, oldest_recent}


def test_the_key_just_written_stays_even_when_clocks_disagree(tmp_path: Path) -> None:
    # A data dir on NFS: the server stamped our new package with a clock far behind the others'.
    new = _key(tmp_path, 100, age_s=30 * 24 * HOUR)
    others = [_key(tmp_path, i, age_s=(i + 1) * HOUR) for i in range(KEEP_KEYS + 1)]
    removed = prune_packages(tmp_path, new)
    assert {p.name for p in removed} == {f"vgg16-int8-{others[3]}.pt2", f"vgg16-int8-{others[3]}.json"}
    assert _digests(tmp_path) == {new, *others[:3]}


def test_a_missing_or_unreadable_cache_dir_prunes_nothing(tmp_path: Path) -> None:
    assert prune_packages(tmp_path / "absent", "0" * 16) == []
    (tmp_path / "file").write_text("not a directory")
    assert prune_packages(tmp_path / "file", "0" * 16) == []


class _Tiny(nn.Module):
    """A small convolutional model split as VGG16's FC7 is (``features``, then ``from_features``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Linear(8 * 4 * 4, 16)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(features, 4)
        return torch.relu(self.head(torch.flatten(pooled, 1)))


def _prepared(crops: npt.NDArray[np.uint8]) -> torch.Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_building_prunes_stale_keys_a_reuse_marks_its_key_used_and_a_damaged_package_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "compile-cache"
    cache.mkdir()
    old = [_key(cache, i, age_s=(i + 1) * 24 * HOUR) for i in range(KEEP_KEYS + 1)]
    model = _Tiny().eval()
    calibration = photo_crops(range(4))

    def build() -> Int8Model:
        # The gate is not what is tested here: any fidelity passes.
        return load_or_build(
            model, _prepared, "tiny:0", cache, calibration=calibration, min_cosine=-1.0, min_agreement=0.0
        )

    try:
        built = build()
    except Int8UnavailableError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"int8 cannot be compiled here: {e}")
    assert not built.reused
    new = built.package.name[len("vgg16-int8-") : -len(".pt2")]
    # The new key and the two most recently used old ones stay; the older two are gone.
    assert _digests(cache) == {new, old[0], old[1]}
    assert {p.name for p in cache.iterdir()} >= {f"vgg16-int8-{new}.pt2", f"vgg16-int8-{new}.json"}

    # Built three days ago, last read twelve hours ago: a read now does not move a relatime atime.
    record, package = cache / f"vgg16-int8-{new}.json", built.package
    built_at, read_at = time.time() - 72 * HOUR, time.time() - 12 * HOUR
    for path in (record, package):
        os.utime(path, (read_at, built_at))
    again = build()
    assert again.reused
    # Reusing wrote nothing (the record's mtime is its build time) but marked the key as used now.
    assert record.stat().st_mtime == pytest.approx(built_at, abs=1)
    assert record.stat().st_atime > time.time() - 60
    # So it outranks a key used an hour ago, although it was built and last read before that.
    recent = _key(cache, 99, age_s=HOUR)
    removed = prune_packages(cache, recent, newest=1)
    assert _digests(cache) == {new, recent}
    assert {p.name for p in removed} == {
        f"vgg16-int8-{digest}{suffix}" for digest in old[:2] for suffix in (".pt2", ".json")
    }

    # The package damaged, or removed by another machine's pruner, after the verdict was read: the
    # start builds it again, with a warning, instead of failing.
    expected = again.features(_prepared(calibration))
    package.write_bytes(b"not a zip archive")
    with caplog.at_level(logging.WARNING, logger="imgwatch.services.int8"):
        rebuilt = build()
    assert not rebuilt.reused
    assert f"cannot load {package}, building it again" in caplog.text
    torch.testing.assert_close(rebuilt.features(_prepared(calibration)), expected)
    assert _digests(cache) == {new, recent}
