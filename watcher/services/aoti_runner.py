"""The int8 model's runner: an AOTInductor package run with Python's GIL released.

torch's loader holds the GIL for the whole of a model run (pytorch/pytorch#197516): measured here,
a Python thread beside a batch of 16 through the int8 VGG16 got 3 % of its free rate (0.39 million
loop turns a second against 11), so ``index``'s readers, decoders and store writes, and the
daemon's HTTP answers, stood still for each 0.7 s batch. A 30-line extension (``aoti_runner.cpp``)
runs the same package with the GIL released (its outputs are bit for bit torch's). It is compiled
with the compiler Inductor uses, once per torch, Python and source, into the int8 compile cache
beside the packages (14 s on 2 cores); a build that fails is recorded there, and the model then
runs through torch's loader, with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("aoti_runner.cpp")
MODULE = "imgwatch_aoti_runner"
#: A build is given this long; torch's headers take ~14 s on 2 cores.
BUILD_TIMEOUT_S = 600

_loaded: dict[Path, ModuleType] = {}
_lock = threading.Lock()


class RunnerUnavailableError(Exception):
    """The GIL-free runner cannot be built or loaded here: the reason is the message."""


class _Runner(Protocol):
    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]: ...


class GilFreeModel:
    """A loaded package, called as torch's loader is: one tensor in, one out."""

    def __init__(self, runner: _Runner) -> None:
        self._runner = runner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        [out] = self._runner.run([x])
        return out


def load(package: Path, cache: Path) -> GilFreeModel:
    """``package`` loaded by the runner built in ``cache`` (built there first if need be).

    Raises :class:`RunnerUnavailableError` when the runner cannot be had, and ``RuntimeError`` (as
    torch's loader does) when the package itself cannot be loaded."""
    module = runner_module(cache)
    return GilFreeModel(cast(_Runner, module.Runner(str(package))))


def runner_module(cache: Path) -> ModuleType:
    """The runner extension from ``cache``, built there once; loaded once per process."""
    compiler = _compiler()
    built = cache / f"aoti-runner-{_digest(compiler)}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    failed = built.with_name(built.name.split(".", 1)[0] + ".failed")
    with _lock:
        if built in _loaded:
            return _loaded[built]
        if not built.is_file():
            if failed.is_file():
                raise RunnerUnavailableError(f"its build failed before (recorded in {failed})")
            _build(compiler, built, failed)
        module = _import(built)
        _loaded[built] = module
        return module


def _compiler() -> str:
    from torch._inductor import cpp_builder

    try:
        return str(cpp_builder.get_cpp_compiler())
    except Exception as e:  # Inductor's own error for "none of these compilers runs"
        raise RunnerUnavailableError(f"no C++ compiler ({type(e).__name__}: {e})") from e


def _digest(compiler: str) -> str:
    """Whatever the built extension depends on: its source, torch, Python, the compiler."""
    parts = [SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), compiler.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _build(compiler: str, target: Path, failed: Path) -> None:
    from torch.utils import cpp_extension

    log.info("int8: building the runner that frees Python's GIL while the model runs (once per torch)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".so")
    os.close(fd)
    libraries = cpp_extension.library_paths()
    command = [
        compiler,
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c++20",  # torch 2.14's headers use C++20
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        f"-I{sysconfig.get_paths()['include']}",
        str(SOURCE),
        "-o",
        temp,
        *(f"-L{path}" for path in libraries),
        *(f"-Wl,-rpath,{path}" for path in libraries),
        "-lc10",
        "-ltorch",
        "-ltorch_cpu",
        "-ltorch_python",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            lines = done.stderr.splitlines()
            first = next((line for line in lines if "error" in line), lines[0] if lines else "")
            reason = f"{Path(compiler).name} exited {done.returncode}: {first[:300]}"
            _record_failure(failed, reason)
            raise RunnerUnavailableError(reason)
        os.replace(temp, target)
    except (OSError, subprocess.TimeoutExpired) as e:
        _record_failure(failed, f"{type(e).__name__}: {e}")
        raise RunnerUnavailableError(f"cannot build it ({type(e).__name__}: {e})") from e
    finally:
        Path(temp).unlink(missing_ok=True)


def _record_failure(failed: Path, reason: str) -> None:
    with contextlib.suppress(OSError):  # then the next start tries again: slower, never wrong
        failed.write_text(reason + "\n")


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise RunnerUnavailableError(f"{path} is not a loadable extension")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:  # built for another torch that left a same-named file, or damaged
        raise RunnerUnavailableError(f"cannot load {path}: {e}") from e
    return module
