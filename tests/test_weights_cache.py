"""Weights without a wasted initialisation: meta-device builds, memory-mapped files, and the cache of
``random:SEED`` initialisations in the user's cache dir (issue 16, "Cold start")."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from imgwatch.errors import WeightsFileError
from imgwatch.services.extractor import WeightsSpec, build_vgg16
from imgwatch.services.weights import imagenet_weights_file, random_init_file, random_vgg16

REPO = Path(__file__).resolve().parents[1]
SEED = 5


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user cache dir: a damaged file here cannot hurt a process that maps the real one."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    """What ``random:SEED`` promises: torchvision's own init under ``torch.manual_seed(SEED)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return torchvision.models.vgg16(weights=None).state_dict()


def assert_bit_for_bit(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype == torch.float32, name
        # Integer views: equal floats are not enough (0.0 == -0.0), the bits must be the same.
        assert torch.equal(state[name].view(torch.int32), tensor.view(torch.int32)), name


def mapped_from(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process that map ``path``, as the kernel reports them."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def assert_memory_mapped(tensors: Iterable[torch.Tensor], path: Path) -> None:
    ranges = mapped_from(path)
    assert ranges, f"{path} is not mapped into this process"
    for tensor in tensors:
        address = tensor.data_ptr()
        assert any(start <= address < end for start, end in ranges), "a tensor is not the file's pages"


def test_a_cached_seeded_init_is_bit_for_bit_the_seeded_init(
    cache_home: Path, expected: dict[str, torch.Tensor]
) -> None:
    path = random_init_file(SEED)
    assert path.is_relative_to(cache_home / "imgwatch")
    assert torch.__version__ in path.name and torchvision.__version__ in path.name

    made = random_vgg16(SEED)  # makes the init and writes the cache
    assert path.is_file()
    written = path.stat().st_mtime_ns
    loaded = random_vgg16(SEED)  # from the cache

    assert_bit_for_bit(made, expected)
    assert_bit_for_bit(loaded, expected)
    assert_memory_mapped(loaded.parameters(), path)
    assert path.stat().st_mtime_ns == written
    assert not [p for p in path.parent.iterdir() if p != path], "a temporary file was left behind"


@pytest.mark.parametrize("damage", ["truncated", "a byte changed inside"])
def test_a_damaged_cache_file_is_logged_and_made_again(
    cache_home: Path, damage: str, caplog: pytest.LogCaptureFixture, expected: dict[str, torch.Tensor]
) -> None:
    random_vgg16(SEED)
    path = random_init_file(SEED)
    size = path.stat().st_size
    if damage == "truncated":
        os.truncate(path, size // 2)
    else:
        # Halfway into a 528 MB file is inside a tensor's bytes, which no zip header covers.
        with path.open("r+b") as f:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))

    with caplog.at_level(logging.INFO, logger="imgwatch.services.weights"):
        remade = random_vgg16(SEED)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "making it again" in warnings[0].getMessage()
    assert_bit_for_bit(remade, expected)
    assert path.stat().st_size == size
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgwatch.services.weights"):
        assert_bit_for_bit(random_vgg16(SEED), expected)
    assert not caplog.records, "the remade cache file was not good"


UNWRITABLE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
import torch
from imgwatch.services.weights import random_vgg16
with torch.random.fork_rng(devices=[]):
    torch.manual_seed({seed})
    import torchvision
    expected = torchvision.models.vgg16(weights=None).state_dict()
model = random_vgg16({seed})
assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
print("ok")
"""


def test_an_unwritable_cache_dir_means_no_cache(tmp_path: Path) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to drop CAP_DAC_OVERRIDE with setpriv"
    elif shutil.which("setpriv") is None:
        reason = "needs setpriv (util-linux)"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but this test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    home = tmp_path / "readonly"
    home.mkdir()
    home.chmod(0o500)
    env = os.environ | {"XDG_CACHE_HOME": str(home), "PYTHONPATH": str(REPO)}
    # Root writes into a 0500 directory through CAP_DAC_OVERRIDE: without it, it is read-only to us.
    result = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override", sys.executable, "-c", UNWRITABLE.format(seed=SEED)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "not caching the VGG16 init for random:5" in result.stderr
    assert "Permission denied" in result.stderr
    assert list(home.iterdir()) == []


def test_a_weights_file_is_mapped_and_no_init_runs(tmp_path: Path, expected: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(expected, path)
    rng = torch.random.get_rng_state()

    model = build_vgg16(WeightsSpec.parse(str(path)))

    # torchvision's init draws from the global generator: an unchanged state shows it did not run.
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert_bit_for_bit(model, expected)
    assert_memory_mapped(model.parameters(), path)


def test_the_imagenet_weights_load_from_torchvisions_cache_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: dict[str, torch.Tensor]
) -> None:
    # A VGG16 state dict where torchvision keeps the downloaded ImageNet file: no network needed,
    # and the path proves the weights are taken from torchvision's cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = imagenet_weights_file()
    assert cached == tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.save(expected, cached)
    rng = torch.random.get_rng_state()

    model = build_vgg16(WeightsSpec.parse("imagenet"))

    assert torch.equal(torch.random.get_rng_state(), rng)
    assert_bit_for_bit(model, expected)
    assert_memory_mapped(model.parameters(), cached)


def test_a_state_dict_missing_a_tensor_is_a_clear_error(
    tmp_path: Path, expected: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "partial.pth"
    state = {k: v for k, v in expected.items() if k != "classifier.3.weight"}
    torch.save(state, path)

    with pytest.raises(
        WeightsFileError, match=r"(?s)partial\.pth: not a VGG16 state dict.*classifier\.3\.weight"
    ):
        build_vgg16(WeightsSpec.parse(str(path)))
