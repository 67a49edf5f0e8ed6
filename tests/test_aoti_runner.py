"""The int8 model runs with Python's GIL released, and without the runner it still runs (issue 16).

A real AOTInductor package of a small convolutional model (a VGG16 package costs a minute or more
to quantize and compile on 2 cores; tests/test_int8.py builds one) is run by the runner imgwatch
builds and by torch's own loader, while another Python thread ticks: under torch's loader that
thread stands still for the whole run, under the runner it keeps ticking. A compiler that fails
(a real executable that answers ``--version`` and fails every build) leaves torch's loader, with
one warning, and the failure is recorded so the next start does not try again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from imgwatch.services.aoti_runner import GilFreeModel
from imgwatch.services.int8 import Int8Model, Int8UnavailableError, load_or_build, photo_crops
from tests.conftest import REPO
from tests.harness import clean_env
from tests.namespaces import mount_namespace

pytestmark = pytest.mark.slow


class Small(nn.Module):
    """Two full-size convolutions: a batch takes long enough to watch another thread during it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(64 * 4 * 4, 16)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 4), 1)))


def prepared(crops: npt.NDArray[np.uint8]) -> torch.Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(memory_format=torch.channels_last)


def build(cache: Path) -> Int8Model:
    # The gate is not what is tested here: any fidelity passes.
    return load_or_build(
        Small().eval(),
        prepared,
        "small:0",
        cache,
        calibration=photo_crops(range(4)),
        min_cosine=-1.0,
        min_agreement=0.0,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Int8Model:
    try:
        return build(tmp_path_factory.mktemp("compile-cache"))
    except Int8UnavailableError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"int8 cannot be compiled here: {e}")


def longest_pause(call: Callable[[], object]) -> tuple[float, float]:
    """How long ``call`` took, and the longest stretch of it in which another Python thread did not
    get to run (that thread notes each stretch of over a millisecond between two of its turns)."""
    stretches: list[tuple[float, float]] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now - last > 1e-3:
                stretches.append((last, now))
            last = now
            if stop.is_set():
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # fine-grained handovers wherever the GIL is free to be handed over
    ticker = threading.Thread(target=tick)
    try:
        ticker.start()
        time.sleep(0.05)
        started = time.perf_counter()
        call()
        ended = time.perf_counter()
    finally:
        stop.set()
        ticker.join()
        sys.setswitchinterval(interval)
    overlaps = (min(b, ended) - max(a, started) for a, b in stretches)
    return ended - started, max(overlaps, default=0.0)


def test_the_runner_frees_the_gil_while_the_model_runs_and_computes_what_torchs_loader_does(
    built: Int8Model,
) -> None:
    assert isinstance(built.features, GilFreeModel)
    assert list(built.package.parent.glob("aoti-runner-*.so"))
    torchs = torch._inductor.aoti_load_package(str(built.package))
    x = prepared(photo_crops(range(4)))
    torch.testing.assert_close(built.features(x), torchs(x), rtol=0, atol=0)

    # A batch that runs for at least 0.3 s: a scheduler's time slice is then a small part of it.
    batch = x
    while True:
        started = time.perf_counter()
        built.features(batch)
        if time.perf_counter() - started >= 0.3:
            break
        batch = torch.cat([batch, batch]).contiguous(memory_format=torch.channels_last)
    torchs(batch)  # warm
    took, paused = longest_pause(lambda: torchs(batch))
    # The control: under torch's loader the other thread stands still for nearly the whole run.
    assert paused > 0.8 * took, (took, paused)
    took, paused = longest_pause(lambda: built.features(batch))
    assert paused < 0.5 * took, (took, paused)


def _script(cache: Path) -> str:
    """Python that loads (or builds) the small model's int8 package in ``cache`` and prints its
    features' kind and outputs on a few photos as JSON; logs on stderr."""
    return textwrap.dedent(
        f"""
        import json, logging
        from pathlib import Path
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
        from imgwatch.services.int8 import photo_crops
        from tests.test_aoti_runner import build, prepared
        built = build(Path({str(cache)!r}))
        out = built.features(prepared(photo_crops(range(4))))
        kind = type(built.features).__name__
        print(json.dumps({{"kind": kind, "reused": built.reused, "out": out.tolist()}}))
        """
    )


def _start(cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _script(cache)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _copy_package(built: Int8Model, cache: Path, *, runner: bool) -> None:
    cache.mkdir(exist_ok=True)
    for path in built.package.parent.glob("vgg16-int8-*"):
        shutil.copy2(path, cache / path.name)
    if runner:
        for path in built.package.parent.glob("aoti-runner-*.so"):
            shutil.copy2(path, cache / path.name)


def test_a_runner_that_does_not_build_leaves_torchs_loader_with_one_warning_and_is_not_tried_again(
    built: Int8Model, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _copy_package(built, cache, runner=False)
    calls = tmp_path / "compiler-calls"
    broken = tmp_path / "broken-c++"
    broken.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            if [ "$1" = --version ]; then echo "broken-c++ 1.0"; exit 0; fi
            echo "$@" >> {calls}
            echo "broken-c++: error: this compiler builds nothing" >&2
            exit 1
            """
        )
    )
    broken.chmod(0o755)
    env = clean_env() | {"CXX": str(broken)}
    expected = built.features(prepared(photo_crops(range(4))))

    def runner_builds() -> int:
        # Inductor probes the compiler too (its vector ISA checks); only the runner's builds count.
        return sum("aoti-runner-" in line for line in calls.read_text().splitlines())

    first = _start(cache, env)
    assert first.returncode == 0, first.stderr
    warnings = [line for line in first.stderr.splitlines() if line.startswith("WARNING imgwatch")]
    assert len(warnings) == 1, first.stderr
    assert "int8: the model holds Python's GIL while it runs (torch's loader)" in warnings[0]
    assert "this compiler builds nothing" in warnings[0]
    result = json.loads(first.stdout)
    assert result["reused"] and result["kind"] != "GilFreeModel"
    torch.testing.assert_close(torch.tensor(result["out"]), expected)
    assert runner_builds() == 1
    [failed] = cache.glob("aoti-runner-*.failed")
    assert not list(cache.glob("aoti-runner-*.so"))

    again = _start(cache, env)
    assert again.returncode == 0, again.stderr
    assert f"its build failed before (recorded in {failed}; delete it to retry)" in again.stderr
    assert runner_builds() == 1  # not built again
    torch.testing.assert_close(torch.tensor(json.loads(again.stdout)["out"]), expected)


def test_a_runner_file_that_is_not_the_runner_is_built_again_once(
    built: Int8Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In the runner's place, a real shared library that is not a Python extension (as a runner
    built by another build of the same torch version would fail to load): it is replaced, once.
    (A truncated file is not tested: dlopen would take the process down with SIGBUS; the runner
    reaches its name only once written and synced.)"""
    cache = tmp_path / "cache"
    _copy_package(built, cache, runner=True)
    [runner] = cache.glob("aoti-runner-*.so")
    source = tmp_path / "other.c"
    source.write_text("int imgwatch_not_a_runner(void) { return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(runner), str(source)], check=True)
    with caplog.at_level(logging.INFO):
        again = build(cache)
    assert again.reused and isinstance(again.features, GilFreeModel)
    assert f"int8: rebuilding the runner {runner}" in caplog.text
    assert caplog.text.count("building the runner that frees") == 1
    x = prepared(photo_crops(range(4)))
    torch.testing.assert_close(again.features(x), built.features(x), rtol=0, atol=0)


def test_a_read_only_cache_runs_the_model_through_torchs_loader(built: Int8Model, tmp_path: Path) -> None:
    """A cache on a file system mounted read-only (a shared, provisioned cache, say): the runner
    cannot be built there, and the package still runs, by torch's loader."""
    with mount_namespace() as space:
        cache = tmp_path / "read-only"
        _copy_package(built, tmp_path / "staged", runner=False)
        cache.mkdir()
        staged = tmp_path / "staged"
        space.sh(f"mount -t tmpfs tmpfs {cache} && cp {staged}/* {cache}/ && mount -o remount,ro {cache}")
        result = json.loads(space.python(_script(cache)).splitlines()[-1])
    assert result["reused"] and result["kind"] != "GilFreeModel"
    torch.testing.assert_close(torch.tensor(result["out"]), built.features(prepared(photo_crops(range(4)))))
