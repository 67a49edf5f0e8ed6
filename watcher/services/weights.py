"""VGG16's weights, loaded without paying for an initialisation that is thrown away.

``torchvision.models.vgg16()`` fills 138 M parameters with random numbers (1.5-3 s on a 2-core CPU)
before any weights are loaded over them. For ImageNet and weights files the network is built on the
meta device instead (no storage, no init) and the loaded tensors are assigned to it, memory-mapped
from the file where its format allows.

``random:SEED`` weights *are* that initialisation, so they are made once per machine and kept in the
user's cache dir, then memory-mapped like any other weights file (see docs/decisions.md, "Cold
start"). The cache is an optimisation only: a missing, unreadable or unwritable cache means the
initialisation runs, never an error.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
import torchvision
from torch import nn
from torchvision.models import VGG16_Weights

from imgwatch.errors import WeightsFileError, WeightsUnavailableError

log = logging.getLogger(__name__)

ENV_XDG_CACHE_HOME = "XDG_CACHE_HOME"
IMAGENET_WEIGHTS = VGG16_Weights.IMAGENET1K_V1
#: Bumped whenever the layout of a cached random initialisation changes.
RANDOM_INIT_FORMAT = 1
_ZIP_MAGIC = b"PK\x03\x04"


def cache_dir() -> Path:
    """imgwatch's per-user cache: ``$XDG_CACHE_HOME/imgwatch``, else ``~/.cache/imgwatch``.

    Read at each call, so a process (or a test) that changes the variable gets its own cache."""
    base = os.environ.get(ENV_XDG_CACHE_HOME, "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if base and Path(base).is_absolute() else Path("~/.cache").expanduser()
    return root / "imgwatch"


def imagenet_weights_file() -> Path:
    """Where torchvision's download cache keeps the ImageNet VGG16 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS.url).name


def random_init_file(seed: int) -> Path:
    """The cached initialisation for ``seed``: named for the versions that made it, since torch's
    generators and torchvision's init code may change between them."""
    name = f"vgg16-random-{seed}-torch{torch.__version__}-torchvision{torchvision.__version__}.pt"
    return cache_dir() / name


def vgg16_on_meta() -> nn.Module:
    """The VGG16 architecture with no storage behind its tensors: free to build, loaded by assign."""
    with torch.device("meta"):
        return cast(nn.Module, torchvision.models.vgg16(weights=None))


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> nn.Module:
    """Assign ``state``'s tensors to a meta-device ``model``; a missing, extra or misshapen tensor
    is a :class:`WeightsFileError` naming ``source``."""
    try:
        model.load_state_dict(state, assign=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise WeightsFileError(source, f"not a VGG16 state dict: {e}") from e
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise WeightsFileError(source, "not a VGG16 state dict: some tensors were not loaded")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        # assign keeps the file's dtype; the model computes in fp32 and switches precision later.
        model.float()
    return model.eval()


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (or a checkpoint holding one under ``state_dict``),
    memory-mapped when the file is in torch's zip format (the legacy format cannot be)."""
    try:
        with path.open("rb") as f:
            mappable = f.read(4) == _ZIP_MAGIC
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
    except FileNotFoundError:
        raise WeightsFileError(path, "no such file") from None
    except Exception as e:
        raise WeightsFileError(path, f"not a PyTorch state-dict file ({e})") from e
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise WeightsFileError(path, f"expected a state dict, found {type(loaded).__name__}")
    return loaded


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights from torchvision's cache; downloaded there first (hash-checked) if absent.

    torchvision checks the hash only when it downloads, and then loads the file it keeps; a cached
    file is loaded here the same way, but memory-mapped. Never falls back to other weights."""
    expected = imagenet_weights_file()
    if expected.is_file():
        return load_state_file(expected)
    try:
        state: dict[str, torch.Tensor] = IMAGENET_WEIGHTS.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsUnavailableError(expected, IMAGENET_WEIGHTS.url, str(e)) from e
    return state


def random_vgg16(seed: int) -> nn.Module:
    """VGG16 exactly as ``torch.manual_seed(seed); torchvision.models.vgg16()`` makes it, from the
    cache when it holds this seed's initialisation, else made and then cached."""
    path = random_init_file(seed)
    cached = _read_random_init(path, seed)
    if cached is not None:
        return cached
    # A private generator state: seeding must not leak into the caller's global RNG use.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = torchvision.models.vgg16(weights=None)
    _write_random_init(path, seed, model.state_dict())
    return model.eval()


def _checksums(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    # A CRC per tensor: the zip reader finds a truncated file, but not bytes damaged inside one.
    return {name: zlib.crc32(_bytes_of(t)) for name, t in state.items()}


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(cast(bytes, tensor.contiguous().view(torch.uint8).numpy()))


def _read_random_init(path: Path, seed: int) -> nn.Module | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - any unreadable cache file is made again, never an error
        log.warning("cached VGG16 init %s is unreadable, making it again: %s", path, e)
        return None
    try:
        if saved["format"] != RANDOM_INIT_FORMAT or saved["seed"] != seed:
            raise ValueError(f"it holds format {saved['format']!r}, seed {saved['seed']!r}")
        state = saved["state_dict"]
        if _checksums(state) != saved["crc32"]:
            raise ValueError("its tensors do not match their checksums")
        return load_into(vgg16_on_meta(), state, path)
    except (KeyError, TypeError, ValueError, AttributeError, WeightsFileError) as e:
        log.warning("cached VGG16 init %s is damaged, making it again: %s", path, e)
        return None


def _write_random_init(path: Path, seed: int, state: Mapping[str, torch.Tensor]) -> None:
    """Save atomically: readers (another pytest worker, a daemon) see the whole file or none."""
    payload = {
        "format": RANDOM_INIT_FORMAT,
        "seed": seed,
        "state_dict": dict(state),
        "crc32": _checksums(state),
    }
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        # Replaced, never rewritten in place: a process with the old file mapped keeps its inode.
        os.replace(temp, path)
        temp = None
        log.info("cached the VGG16 init for random:%d at %s", seed, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as RuntimeError
        log.info("not caching the VGG16 init for random:%d (%s): each start makes it again", seed, e)
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
