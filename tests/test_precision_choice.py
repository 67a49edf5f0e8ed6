"""``precision = float`` (and ``auto`` where int8 is out) on a CPU: decided by measuring bf16 against fp32
once, then read from the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgwatch.services.extractor import PROBE_VERSION, VGG16Extractor, WeightsSpec
from imgwatch.services.precision import (
    cached_fidelity,
    choose_precision,
    cpu_supports_bf16,
    decision_file,
    decision_key,
    fidelity_file,
    fidelity_key,
)
from imgwatch.services.weights import random_init_file, random_vgg16

REPO = Path(__file__).resolve().parents[1]
START = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
from imgwatch.services.extractor import VGG16Extractor, WeightsSpec
extractor = VGG16Extractor(WeightsSpec.parse("random:0"), precision=sys.argv[1], batch_size=2)
print(extractor.signature.dtype)
extractor.close()
"""
MEASURED = "INFO imgwatch.services.precision precision float: "
FROM_CACHE = "DEBUG imgwatch.services.precision precision float: "

needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(), reason="float measures only on CPUs with native bf16; others use fp32 unmeasured"
)


def cache_with_the_random_init(home: Path) -> Path:
    """A fresh cache dir for decisions that shares the machine's random:0 init (528 MB) by a link."""
    real = random_init_file(0)
    if not real.is_file():
        random_vgg16(0)
    (home / "imgwatch").mkdir(parents=True)
    (home / "imgwatch" / real.name).symlink_to(real)
    return home


def start_extractor(
    home: Path, precision: str = "float", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """An extractor with ``precision`` in a fresh process, with ``home`` as its user cache dir (and
    ``env`` added to the environment)."""
    result = subprocess.run(
        [sys.executable, "-c", START, precision],
        env=os.environ | (env or {}) | {"XDG_CACHE_HOME": str(home), "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result


def the_decision(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return decision_file(decision_key())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A cache dir in which a first process measured and recorded its decision."""
    home = cache_with_the_random_init(tmp_path_factory.mktemp("measured") / "cache")
    return home, start_extractor(home)


@needs_bf16
def test_the_first_start_measures_and_a_later_one_reads_the_decision(
    measured: tuple[Path, subprocess.CompletedProcess[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, first = measured
    decision = the_decision(home, monkeypatch)
    assert decision.is_file()
    assert MEASURED in first.stderr and "bf16 ran" in first.stderr, first.stderr
    written = decision.stat().st_mtime_ns

    later = start_extractor(home)

    assert later.stdout == first.stdout
    assert MEASURED not in later.stderr, later.stderr
    assert FROM_CACHE in later.stderr and str(decision) in later.stderr, later.stderr
    assert decision.stat().st_mtime_ns == written


@needs_bf16
def test_a_damaged_decision_is_measured_again(
    measured: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = cache_with_the_random_init(tmp_path / "cache")
    decision = the_decision(home, monkeypatch)
    shutil.copy(the_decision(measured[0], monkeypatch), decision)
    os.truncate(decision, decision.stat().st_size // 2)

    again = start_extractor(home)

    assert "is unreadable, measuring again" in again.stderr, again.stderr
    assert MEASURED in again.stderr, again.stderr
    assert again.stdout.strip() in ("fp32", "bf16")
    # The rewritten decision is whole: the next start reads it.
    assert MEASURED not in start_extractor(home).stderr


def test_an_explicit_precision_and_float_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # IMGWATCH_PRECISION feeds the CLI's settings; an extractor made in-process obeys only its argument.
    def not_measured() -> float:
        raise AssertionError("the decision should be cached by now")

    chosen = VGG16Extractor(WeightsSpec.parse("random:0"), precision="float", batch_size=2)
    try:
        decided = choose_precision("float", torch.device("cpu"), not_measured)
    finally:
        chosen.close()
    monkeypatch.setenv("IMGWATCH_PRECISION", "fp32" if decided == "bf16" else "bf16")
    explicit = VGG16Extractor(WeightsSpec.parse("random:0"), precision="fp32", batch_size=2)
    chosen = VGG16Extractor(WeightsSpec.parse("random:0"), precision="float", batch_size=2)
    try:
        assert explicit.signature.dtype == "fp32"
        assert chosen.signature.dtype == decided
    finally:
        explicit.close()
        chosen.close()


@needs_bf16
def test_the_fidelity_gate_is_measured_once_per_machine_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Explicit bf16: the first start runs the gate's probe and records its cosine; a later start with
    the same weights reads it and runs no probe (the record is untouched); other weights measure anew."""
    home = cache_with_the_random_init(tmp_path / "cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    key = fidelity_key("random:0", "bf16", PROBE_VERSION)

    first = start_extractor(home, precision="bf16")

    record = fidelity_file(key)
    assert first.stdout.strip() == "bf16", first.stderr
    assert "(cached in" not in first.stderr
    cosine = cached_fidelity(key)
    assert cosine is not None and cosine >= 0.999
    written = record.stat().st_mtime_ns

    later = start_extractor(home, precision="bf16")

    assert later.stdout.strip() == "bf16"
    assert f"fidelity of bf16: cosine to fp32 {cosine:.5f} (cached in {record})" in later.stderr, later.stderr
    assert record.stat().st_mtime_ns == written
    assert fidelity_file(fidelity_key("random:1", "bf16", PROBE_VERSION)) != record


@needs_bf16
@pytest.mark.parametrize("cap", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_kernels_capped_below_bf16_take_fp32_without_measuring(tmp_path: Path, cap: dict[str, str]) -> None:
    """With the vector kernels capped below AVX512, bf16 runs in oneDNN's reference code, hundreds of
    times slower than fp32 (a 2-core VM sat at it for 14 minutes): the CPU's flags must not decide."""
    started = start_extractor(cache_with_the_random_init(tmp_path / "cache"), "float", env=cap)

    assert started.stdout.strip() == "fp32"
    assert MEASURED not in started.stderr and FROM_CACHE not in started.stderr, started.stderr
