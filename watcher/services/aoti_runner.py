"""The int8 model's runner: an AOTInductor package run with Python's GIL released.

torch's loader holds the GIL for the whole of a model run (pytorch/pytorch#197516): measured here,
a Python thread beside a batch of 16 through the int8 VGG16 got 3 % of its free rate (0.39 million
loop turns a second against 11), so ``index``'s readers, decoders and store writes, and the
daemon's HTTP answers, stood still for each 0.7 s batch. A 30-line extension (``aoti_runner.cpp``)
runs the same package with the GIL released (its outputs are bit for bit torch's). It is compiled
with the compiler Inductor uses, once per torch, Python and source, into the int8 compile cache
beside the packages (12-14 s on 2 cores). A build the compiler refuses is recorded there for a
day, and the model then runs through torch's loader, with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("aoti_runner.cpp")
MODULE = "imgwatch_aoti_runner"
#: A build is given this long; torch's headers take ~14 s on 2 cores.
BUILD_TIMEOUT_S = 600
#: A build the compiler refused is not tried again for this long (installing the Python headers,
#: say, is noticed the day after; deleting the ``.failed`` file the warning names, at once).
RETRY_AFTER_S = 24 * 3600

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
    try:
        compiler = _compiler()
        command = _command(compiler)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        built = cache / f"aoti-runner-{_digest(compiler, command)}{suffix}"
        failed = built.with_name(built.name.split(".", 1)[0] + ".failed")
        with _lock:
            if built in _loaded:
                return _loaded[built]
            if not built.is_file():
                _build_unless_refused(command, built, failed)
            try:
                module = _import(built)
            except RunnerUnavailableError as e:
                # Made by another build of the same torch version, or not a runner at all: built
                # again, once. (A truncated one cannot get here: it gets its name only once written
                # and synced, and dlopen would fault on it rather than raise.)
                log.warning("int8: rebuilding the runner %s: %s", built, e)
                built.unlink(missing_ok=True)
                _build_unless_refused(command, built, failed)
                # dlopen hands back the library it already opened under that name: the new file
                # is opened under another, for as long as the import takes.
                alias = built.with_name(f".{built.name}.{os.getpid()}{suffix}")
                os.link(built, alias)
                try:
                    module = _import(alias)
                finally:
                    alias.unlink(missing_ok=True)
            _loaded[built] = module
            return module
    except OSError as e:  # a read-only or full cache dir, a vanished source: never fatal
        raise RunnerUnavailableError(f"cannot build or load it ({type(e).__name__}: {e})") from e


def _build_unless_refused(command: list[str], built: Path, failed: Path) -> None:
    try:
        refused_at = failed.stat().st_mtime
    except FileNotFoundError:
        refused_at = None
    if refused_at is not None and time.time() - refused_at < RETRY_AFTER_S:
        raise RunnerUnavailableError(f"its build failed before (recorded in {failed}; delete it to retry)")
    _build(command, built, failed)
    failed.unlink(missing_ok=True)
    _remove_older(built)


def _compiler() -> str:
    from torch._inductor import cpp_builder

    try:
        found = str(cpp_builder.get_cpp_compiler())
    except Exception as e:  # Inductor's own error for "none of these compilers runs"
        raise RunnerUnavailableError(f"no C++ compiler ({type(e).__name__}: {e})") from e
    return shutil.which(found) or found


def _command(compiler: str) -> list[str]:
    """The build, less its output file."""
    from torch.utils import cpp_extension

    libraries = cpp_extension.library_paths()
    return [
        compiler,
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c++20",  # torch 2.14's headers use C++20
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        f"-I{sysconfig.get_paths()['include']}",
        str(SOURCE),
        *(f"-L{path}" for path in libraries),
        *(f"-Wl,-rpath,{path}" for path in libraries),
        "-lc10",
        "-ltorch",
        "-ltorch_cpu",
        "-ltorch_python",
    ]


def _digest(compiler: str, command: list[str]) -> str:
    """Whatever the built extension depends on: its source and build, torch, Python, the compiler
    (by its file: an upgrade is a new compiler)."""
    try:
        stat = os.stat(compiler)
        identity = f"{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        identity = ""
    parts = [
        SOURCE.read_bytes(),
        "\0".join(command).encode(),
        f"{torch.__version__} {torch.version.git_version} {sys.version} {identity}".encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _build(command: list[str], target: Path, failed: Path) -> None:
    log.info("int8: building the runner that frees Python's GIL while the model runs (once per torch)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".so")
    os.close(fd)
    try:
        try:
            done = subprocess.run(
                [*command, "-o", temp], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:  # not the compiler's verdict: not recorded
            raise RunnerUnavailableError(f"cannot build it ({type(e).__name__}: {e})") from e
        if done.returncode != 0:
            lines = done.stderr.splitlines()
            first = next((line for line in lines if "error" in line), lines[0] if lines else "")
            reason = f"{Path(command[0]).name} exited {done.returncode}: {first[:300]}"
            if done.returncode > 0:  # a refusal; a signal (an OOM kill, say) is tried again next time
                with contextlib.suppress(OSError):  # unrecorded, the next start tries again
                    failed.write_text(reason + "\n")
            raise RunnerUnavailableError(reason)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o755 & ~umask)  # mkstemp made it 0600: a shared cache must load it
        with open(temp, "rb") as written:
            os.fsync(written.fileno())  # whole before its name says so
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)


def _remove_older(built: Path) -> None:
    """Runners and refusals of other digests in ``built``'s directory (another torch, compiler or
    source): only this one is loaded from here now. A process that has one loaded keeps it."""
    for other in built.parent.glob("aoti-runner-*"):
        if not other.name.startswith(built.name.split(".", 1)[0]):
            with contextlib.suppress(OSError):
                other.unlink()


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise RunnerUnavailableError(f"{path} is not a loadable extension")
    try:
        module = importlib.util.module_from_spec(spec)  # the dlopen, for an extension
        spec.loader.exec_module(module)
    except ImportError as e:
        raise RunnerUnavailableError(f"cannot load {path}: {e}") from e
    return module
