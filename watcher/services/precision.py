"""Which precision ``precision = auto`` computes in: decided by measuring, once per machine.

A CPU flag says an instruction exists, not that it is fast: on a Sapphire Rapids VM with
AVX512-BF16 but no AMX, bf16 VGG16 ran ~1.6x slower than fp32, while on AMD Zen4 it runs ~2x faster.
So ``auto`` on a CPU with native bf16 times a small batch in both precisions and takes bf16 only
with a clear margin. The verdict is kept in the user's cache dir, keyed by what decides it (CPU
model and flags, the CPUs this process may use, the torch version): later starts read it and time
nothing. Whether bf16's vectors are faithful enough is checked separately by the extractor's
fidelity gate (it depends on the weights): its cosine is kept the same way, keyed by the weights
too, so a later start with the same weights, CPU and torch runs no probe either.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgwatch.services.weights import cache_dir

log = logging.getLogger(__name__)

#: bf16 must run at least this much faster than fp32 here to be worth its small loss of fidelity.
MIN_BF16_SPEEDUP = 1.15
DECISION_FORMAT = 1
FIDELITY_FORMAT = 1
_CHOICES = ("fp32", "bf16")


def cpuinfo_field(name: str) -> str:
    """The first value of ``name`` in /proc/cpuinfo (``model name``, ``flags``), or ``""``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return ""


#: ONEDNN_MAX_CPU_ISA values that leave oneDNN its native bf16 kernels.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AMX or AVX512-BF16) that this process may
    use. ``ATEN_CPU_CAPABILITY`` or ``ONEDNN_MAX_CPU_ISA`` capped below them leave bf16 to a reference
    kernel, hundreds of times slower than fp32: the flags alone would then mislead."""
    flags = cpuinfo_field("flags").split()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper()
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and onednn.startswith(_ONEDNN_BF16_ISAS)


def vector_isa() -> dict[str, str]:
    """The instruction sets this process's kernels may use, as far as it was capped below the CPU's
    flags: compiled code and measured speeds depend on them."""
    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }


def decision_key() -> dict[str, Any]:
    """What bf16's speed relative to fp32 depends on here."""
    return {
        "cpu": cpuinfo_field("model name"),
        "flags": sorted(cpuinfo_field("flags").split()),
        **vector_isa(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
    }


def decision_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"precision-{digest}.json"


def int8_may_pay() -> bool:
    """True on x86-64 CPUs with AVX2 or better, where the int8 path (X86InductorQuantizer, oneDNN's
    u8s8 kernels) exists and ran 2.2x (AVX2 only) to 3.8x (AVX512-VNNI) faster than fp32 VGG16. Whether
    it is faithful is for the fidelity gate, and whether it compiles, for the build: both fall back."""
    return platform.machine().lower() in ("x86_64", "amd64") and "avx2" in cpuinfo_field("flags").split()


def choose_precision(requested: str, device: torch.device, bf16_speedup: Callable[[], float]) -> str:
    """The precision to try: ``requested`` unless it is ``auto`` or ``float``. Both take fp16 on CUDA;
    on a CPU ``auto`` takes int8 where :func:`int8_may_pay`, and otherwise (and ``float`` always)
    bf16 only where ``bf16_speedup()`` (measured once per machine, then cached) shows it pays."""
    if requested not in ("auto", "float"):
        return requested
    if device.type == "cuda":
        return "fp16"
    if requested == "auto" and int8_may_pay():
        return "int8"
    if not cpu_supports_bf16():
        # Emulated bf16 is many times slower than fp32: nothing to measure.
        return "fp32"
    key = decision_key()
    path = decision_file(key)
    cached = _read_decision(path, key)
    if cached is not None:
        choice, ratio = cached
        log.debug(
            "precision %s: %s (bf16 ran %.2fx fp32's speed here, cached in %s)",
            requested,
            choice,
            ratio,
            path,
        )
        return choice
    ratio = bf16_speedup()
    choice = "bf16" if ratio >= MIN_BF16_SPEEDUP else "fp32"
    log.info(
        "precision %s: %s (bf16 ran %.2fx fp32's speed on this CPU; it needs %.2fx)",
        requested,
        choice,
        ratio,
        MIN_BF16_SPEEDUP,
    )
    _write_decision(path, {"format": DECISION_FORMAT, "key": key, "bf16_speedup": ratio, "choice": choice})
    return choice


def measure_bf16_speedup(model: nn.Module, batch: torch.Tensor, rounds: int = 2) -> float:
    """fp32 time over bf16 time for ``model`` on ``batch`` (fp32): best of ``rounds`` warm runs each,
    interleaved so that load from other processes falls on both alike."""
    reduced = _bf16_copy(model)
    low = batch.to(torch.bfloat16)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    with torch.inference_mode():
        # The first run of each pays for allocations and oneDNN's kernel choice.
        model(batch)
        reduced(low)
        for _ in range(rounds):
            for name, net, x in (("fp32", model, batch), ("bf16", reduced, low)):
                started = time.perf_counter()
                net(x)
                best[name] = min(best[name], time.perf_counter() - started)
    return best["fp32"] / best["bf16"]


def _bf16_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16)


def _read_decision(path: Path, key: dict[str, Any]) -> tuple[str, float] | None:
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("precision decision %s is unreadable, measuring again: %s", path, e)
        return None
    try:
        if saved["format"] != DECISION_FORMAT or saved["key"] != key:
            raise ValueError("it was made for another format or machine")
        choice, ratio = saved["choice"], float(saved["bf16_speedup"])
        if choice not in _CHOICES:
            raise ValueError(f"unknown choice {choice!r}")
    except (KeyError, TypeError, ValueError) as e:
        log.warning("precision decision %s is damaged, measuring again: %s", path, e)
        return None
    return choice, ratio


def _write_decision(path: Path, decision: dict[str, Any]) -> None:
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(decision, f, sort_keys=True)
        os.replace(temp, path)
        temp = None
    except OSError as e:
        log.info("not caching the precision decision (%s): the next start measures again", e)
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def fidelity_key(weights_identity: str, precision: str, probe_version: str) -> dict[str, Any]:
    """What the fidelity gate's cosine depends on: the machine (as for the speed), the weights, the
    precision and the probe images."""
    return decision_key() | {"weights": weights_identity, "precision": precision, "probe": probe_version}


def fidelity_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"fidelity-{digest}.json"


def cached_fidelity(key: dict[str, Any]) -> float | None:
    """The gate's cosine measured before with ``key``, or None (never measured, or a damaged file)."""
    path = fidelity_file(key)
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("fidelity record %s is unreadable, measuring again: %s", path, e)
        return None
    try:
        if saved["format"] != FIDELITY_FORMAT or saved["key"] != key:
            raise ValueError("it was made for another format, machine or weights")
        cosine = float(saved["cosine"])
    except (KeyError, TypeError, ValueError) as e:
        log.warning("fidelity record %s is damaged, measuring again: %s", path, e)
        return None
    log.debug("fidelity of %s: cosine to fp32 %.5f (cached in %s)", key["precision"], cosine, path)
    return cosine


def record_fidelity(key: dict[str, Any], cosine: float) -> None:
    _write_decision(fidelity_file(key), {"format": FIDELITY_FORMAT, "key": key, "cosine": cosine})
