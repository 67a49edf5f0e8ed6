"""int8 VGG16 convolutions on CPUs: quantized once, checked against fp32, compiled once, cached.

The 13 convolutions (99 % of the arithmetic) are quantized with PT2E and the x86 Inductor quantizer
(torchao's; torch's own copy is gone in 2.14), calibrated on generated photos that ship with the
package, then compiled ahead of time by AOTInductor into a package kept in a cache directory. fc6
and fc7 stay in fp32: they make the features and are < 1 % of the work. Quantized kernels exist only
compiled: eager, the quantized graph runs its quantize/dequantize steps in fp32, slower than fp32.

The fidelity gate compares, on generated photos the calibration did not see, the int8 fc7 vectors
with fp32's: the worst per-image cosine and the agreement of each image's 10 nearest neighbours
among the held-out set. It runs on the quantized graph before compiling (a bad calibration then
costs no compile) and on the compiled package, whose numbers are recorded beside it: a later start
with the same weights, calibration, CPU and torch loads the package and its verdict, and neither
quantizes nor compiles. The package runs with Python's GIL released (:mod:`imgwatch.services.aoti_runner`):
torch's own loader holds it for the whole run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from imgwatch.samples import photo
from imgwatch.services import aoti_runner
from imgwatch.services.images import prepare
from imgwatch.services.precision import cpuinfo_field, vector_isa

log = logging.getLogger(__name__)


class _DropNotices(logging.Filter):
    """Drops two notices torch logs on every int8 build, which tell a user nothing: torchao registering
    an enum the deprecated way, and torch's CUDA build finding no CUDA runtime (none is needed here).
    Everything else those loggers say still comes through."""

    NOTICES = ("<enum 'KernelPreference'> is an Enum subclass", "No CUDA runtime is found")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOTICES)


for _name in ("torch.utils._pytree", "torch.utils.cpp_extension"):
    logging.getLogger(_name).addFilter(_DropNotices())

#: The bar int8 vectors must clear against fp32's on the held-out photos (docs/decisions.md, issue 16).
MIN_COSINE = 0.99
MIN_AGREEMENT = 0.9
NEIGHBOURS = 10
#: Bump when what a package holds, or how its verdict is measured, changes.
ARTEFACT_FORMAT = 1
#: Packages of this many keys stay in a cache dir (the most recently used): two machines with different
#: CPUs sharing a data dir (NFS) alternate between two keys, and a third spares a rollback (torch
#: downgraded) its rebuild. One package is ~17 MB. See docs/decisions.md ("Old compile-cache
#: packages are pruned when a new one is built").
KEEP_KEYS = 3
#: A key written or used this recently is never pruned: another process may be about to load it.
PRUNE_GRACE_S = 15 * 60
_PACKAGE_NAME = re.compile(r"vgg16-int8-([0-9a-f]{16})\.(?:pt2|json)")
CALIBRATION_SEEDS = range(160_000, 160_032)
HELD_OUT_SEEDS = range(170_000, 170_032)
_PHOTO_SIZE = (320, 240)
_BATCH = 8
#: Why the runner was not had, for each reason warned about: one warning per process, not per load.
_warned_gil: set[str] = set()

Features = Callable[[torch.Tensor], torch.Tensor]
"""A ``(N, 3, 224, 224)`` fp32 channels-last input to VGG16's ``features`` output."""


@dataclass(frozen=True)
class Fidelity:
    """How close int8 fc7 vectors are to fp32's on the held-out photos."""

    worst_cosine: float
    mean_cosine: float
    agreement: float
    """Mean share of each image's :data:`NEIGHBOURS` nearest held-out images that int8 and fp32 share."""
    images: int

    def passes(self, min_cosine: float = MIN_COSINE, min_agreement: float = MIN_AGREEMENT) -> bool:
        return self.worst_cosine >= min_cosine and self.agreement >= min_agreement

    def describe(self) -> str:
        return (
            f"fc7 cosine to fp32 {self.worst_cosine:.4f} worst, {self.mean_cosine:.4f} mean, "
            f"top-{NEIGHBOURS} agreement {self.agreement:.3f} over {self.images} held-out photos"
        )


def fidelity(reference: npt.NDArray[np.float32], candidate: npt.NDArray[np.float32]) -> Fidelity:
    """Compare L2-normalised rows of ``candidate`` with ``reference`` (one row per image)."""
    cosines = np.sum(reference * candidate, axis=1)
    ours, theirs = _neighbours(candidate), _neighbours(reference)
    pairs = zip(ours.tolist(), theirs.tolist(), strict=True)
    shared = [len(set(a) & set(b)) / ours.shape[1] for a, b in pairs]
    return Fidelity(float(cosines.min()), float(cosines.mean()), float(np.mean(shared)), len(reference))


def _neighbours(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    k = min(NEIGHBOURS, len(vectors) - 1)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def photo_crops(seeds: range) -> npt.NDArray[np.uint8]:
    """The generated photos of ``seeds``, JPEG-encoded and prepared as the extractor prepares a file."""
    crops = []
    for seed in seeds:
        buffer = io.BytesIO()
        photo(seed, _PHOTO_SIZE).save(buffer, "JPEG", quality=90)
        crops.append(prepare(buffer.getvalue(), _PHOTO_SIZE[0] * _PHOTO_SIZE[1]))
    return np.stack(crops)


def artefact_key(weights_identity: str, calibration: npt.NDArray[np.uint8]) -> dict[str, Any]:
    """What the compiled package and its verdict depend on. Not the CPUs this process may use: the
    package sizes its thread pool when it runs."""
    return {
        "format": ARTEFACT_FORMAT,
        "weights": weights_identity,
        "calibration": hashlib.sha256(calibration.tobytes()).hexdigest()[:16],
        "held_out": [HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.stop],
        "cpu": cpuinfo_field("model name"),
        "flags": sorted(cpuinfo_field("flags").split()),
        **vector_isa(),
        "torch": torch.__version__,
        "torchao": version("torchao"),
    }


def quantize(features: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """``features`` with its convolutions quantized to int8 (static, per-channel weights), calibrated
    on ``calibration``; the result runs eagerly with simulated quantization, for the gate."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    # reduce_range keeps activations in 7 bits: VNNI's u8 x s8 products then cannot saturate.
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(reduce_range=True))
    with torch.no_grad():
        graph = torch.export.export(features, _example(), dynamic_shapes=_dynamic_batch()).module()
        prepared = prepare_pt2e(graph, quantizer)
        for start in range(0, len(calibration), _BATCH):
            prepared(calibration[start : start + _BATCH])
        return cast(nn.Module, convert_pt2e(prepared))


def compile_package(quantized: nn.Module, path: Path) -> Path:
    """Compile ``quantized`` ahead of time into an AOTInductor package at ``path`` (atomically)."""
    with torch.no_grad():
        program = torch.export.export(quantized, _example(), dynamic_shapes=_dynamic_batch())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".pt2")
        os.close(fd)
        try:
            # Freezing folds the weights into the graph, so the int8 convolutions get them pre-packed.
            torch._inductor.aoti_compile_and_package(
                program, package_path=temp, inductor_configs={"freezing": True}
            )
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)
    return path


def load_package(path: Path) -> Features:
    """The compiled model at ``path``, run with Python's GIL released where the runner builds (see
    :mod:`imgwatch.services.aoti_runner`), else by torch's loader, which holds it."""
    try:
        return aoti_runner.load(path, path.parent)
    except aoti_runner.RunnerUnavailableError as e:
        if str(e) not in _warned_gil:
            _warned_gil.add(str(e))
            log.warning("int8: the model holds Python's GIL while it runs (torch's loader): %s", e)
    return cast(Features, torch._inductor.aoti_load_package(str(path)))


def _example() -> tuple[torch.Tensor]:
    """An input to trace with: two images, since export takes a batch of one for a constant."""
    return (torch.zeros(2, 3, 224, 224).contiguous(memory_format=torch.channels_last),)


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


class FC7Model(Protocol):
    """VGG16 to fc7 split where int8 replaces a part: the convolutions, then fc6/fc7."""

    features: nn.Module

    def from_features(self, features: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Int8Model:
    features: Features
    fidelity: Fidelity
    package: Path
    reused: bool
    """True when the package came from the cache: nothing was quantized or compiled."""


class Int8UnavailableError(Exception):
    """int8 cannot be used here: the reason is the message; the caller stays in float."""


def load_or_build(
    model: FC7Model,
    prepared: Callable[[npt.NDArray[np.uint8]], torch.Tensor],
    weights_identity: str,
    cache: Path,
    *,
    calibration: npt.NDArray[np.uint8] | None = None,
    min_cosine: float = MIN_COSINE,
    min_agreement: float = MIN_AGREEMENT,
) -> Int8Model:
    """The int8 features of ``model`` (an FC7: ``features``, then ``from_features``), from ``cache``
    or built there; ``prepared`` turns uint8 crops into the model's fp32 input.

    Raises :class:`Int8UnavailableError` when the gate refuses or compiling fails; a refusal is recorded,
    so a later start with the same key does not build again.
    """
    calibration = photo_crops(CALIBRATION_SEEDS) if calibration is None else calibration
    key = artefact_key(weights_identity, calibration)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    package, record = cache / f"vgg16-int8-{digest}.pt2", cache / f"vgg16-int8-{digest}.json"

    def vectors(features: Features, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            rows = [
                nn.functional.normalize(model.from_features(features(prepared(crops[i : i + _BATCH]))), dim=1)
                for i in range(0, len(crops), _BATCH)
            ]
        return torch.cat(rows).float().numpy()

    def gate(measured: Fidelity, what: str, *, recorded: bool = False) -> Fidelity:
        if not measured.passes(min_cosine, min_agreement):
            if not recorded:
                _write_record(record, key, measured, refused=True)
            raise Int8UnavailableError(
                f"{what} is not faithful enough: {measured.describe()}; the bar is cosine >= {min_cosine} "
                f"and agreement >= {min_agreement}"
            )
        return measured

    saved = _read_record(record, key)
    if saved is not None:
        gate(saved, f"int8 (verdict recorded in {record})", recorded=True)
        if package.is_file():
            try:
                features = load_package(package)
            except RuntimeError as e:  # removed since is_file (another pruner) or damaged: build again
                log.warning("int8: cannot load %s, building it again: %s", package, _first_line(e))
            else:
                _mark_used(record)
                log.info("int8: reusing the compiled model %s (%s)", package, saved.describe())
                return Int8Model(features, saved, package, reused=True)
    _find_compiler()  # before a minute of quantizing that could not be compiled
    held_out = photo_crops(HELD_OUT_SEEDS)
    reference = vectors(model.features, held_out)
    started = time.monotonic()
    log.info("int8: quantizing VGG16's convolutions (calibrated on %d generated photos)", len(calibration))
    with torch.no_grad():
        inputs = torch.cat(
            [prepared(calibration[i : i + _BATCH]) for i in range(0, len(calibration), _BATCH)]
        )
    quantized = quantize(model.features, inputs)
    gate(fidelity(reference, vectors(quantized, held_out)), "int8 (quantized, before compiling)")
    log.info("int8: compiling the quantized model into %s (once per weights, CPU and torch)", package)
    try:
        compile_package(quantized, package)
        compiled = load_package(package)
    except Exception as e:  # a missing compiler or an Inductor failure: the caller stays in float
        raise Int8UnavailableError(
            f"cannot compile the int8 model ({type(e).__name__}: {_first_line(e)})"
        ) from e
    measured = gate(fidelity(reference, vectors(compiled, held_out)), "int8 (compiled)")
    _write_record(record, key, measured, refused=False)
    log.info("int8: quantized and compiled in %.1f s (%s)", time.monotonic() - started, measured.describe())
    for removed in prune_packages(cache, digest):
        log.info("int8: removed %s (of a key not used recently)", removed)
    return Int8Model(compiled, measured, package, reused=False)


def prune_packages(
    cache: Path,
    keep: str,
    *,
    newest: int = KEEP_KEYS,
    grace_s: float = PRUNE_GRACE_S,
    now: float | None = None,
) -> list[Path]:
    """Remove from ``cache`` the packages and verdict records of all keys but the ``newest`` most
    recently used ones and ``keep`` (a key's digest); spare any key whose files were written or used
    in the last ``grace_s`` seconds. Returns the files removed.

    Only files named as :func:`load_or_build` names them are looked at. A key's last use is the latest
    mtime or atime of its files (:func:`_mark_used` sets the record's atime at each reuse). Removing
    a package another process has already loaded is harmless: an open or mapped file outlives its
    name on Linux (and AOTInductor has extracted it by then).
    """
    keys: dict[str, list[tuple[Path, float]]] = {}
    try:
        with os.scandir(cache) as entries:
            for entry in entries:
                match = _PACKAGE_NAME.fullmatch(entry.name)
                if match is None or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                used = max(stat.st_mtime, stat.st_atime)
                keys.setdefault(match[1], []).append((Path(entry.path), used))
    except OSError as e:
        log.info("int8: not pruning %s: %s", cache, e)
        return []
    last_used = {digest: max(used for _, used in files) for digest, files in keys.items()}
    ranked = sorted(last_used, key=lambda digest: last_used[digest], reverse=True)
    now = time.time() if now is None else now
    removed = []
    for digest in ranked[newest:]:
        if digest == keep or now - last_used[digest] < grace_s:
            continue
        # The package before its record: a crash in between leaves only the small record behind.
        for path, _ in sorted(keys[digest], key=lambda item: item[0].suffix != ".pt2"):
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another process pruned it first
            except OSError as e:
                log.info("int8: cannot remove the stale %s: %s", path, e)
                continue
            removed.append(path)
    return removed


def _mark_used(record: Path) -> None:
    """Set ``record``'s atime to now (its mtime, the time it was written, stays): the key's last use
    for :func:`prune_packages`. Best effort: a read-only cache is only never pruned."""
    try:
        written = record.stat().st_mtime_ns
        os.utime(record, ns=(time.time_ns(), written))
    except OSError as e:
        log.debug("int8: cannot mark %s as used: %s", record, e)


def _find_compiler() -> None:
    """Raise :class:`Int8UnavailableError` unless Inductor finds the C++ compiler it would use
    (``$CXX``, else g++)."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # Inductor's own error for "none of these compilers runs"
        raise Int8UnavailableError(
            f"cannot compile the int8 model: no C++ compiler ({type(e).__name__}: {_first_line(e)})"
        ) from e


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _read_record(path: Path, key: dict[str, Any]) -> Fidelity | None:
    try:
        saved = json.loads(path.read_text())
        if saved["key"] != key:
            raise ValueError("it was made for another model, machine or torch")
        return Fidelity(**saved["fidelity"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("int8 record %s is unusable, building again: %s", path, e)
        return None


def _write_record(path: Path, key: dict[str, Any], measured: Fidelity, *, refused: bool) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        saved = {"key": key, "fidelity": asdict(measured), "refused": refused}
        temp.write_text(json.dumps(saved, sort_keys=True))
        os.replace(temp, path)
    except OSError as e:
        log.info("not caching the int8 verdict (%s): the next start builds again", e)
