"""glibc's allocator set for VGG16's batches (imgwatch.allocator): big buffers freed in a thread are
reused by the next batch instead of being mapped and faulted in again, and what is kept goes back to
the system when asked, and when the model has been idle. Each in a fresh process (the settings are
per process, and must come before its threads), measured by the kernel's own counters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgwatch import allocator

pytestmark = pytest.mark.skipif(not allocator.available(), reason="glibc's allocator only")

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, float]:
    # glibc's defaults, whatever this environment sets for the allocator.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env={**clean, "PYTHONPATH": str(REPO), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, (result.stdout, result.stderr)
    return json.loads(lines[-1])  # type: ignore[no-any-return]


# malloc itself, as torch's CPU tensors use it (numpy asks for huge pages for big arrays, torch not).
_MALLOC = textwrap.dedent("""
    import ctypes, ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # Pages of 4 KiB, whatever the machine's transparent huge pages are set to: the count is the test.
    assert libc.prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def touched(size):
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)
""")

_BATCHES = _MALLOC + textwrap.dedent("""
    import json, resource, sys, threading
    from imgwatch import allocator
    tuned = allocator.tune() if sys.argv[-1] != "default" else None
    faults = []
    def batches():
        # 80 MB: above glibc's largest automatic mmap threshold and a thread arena's heap (64 MB).
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            touched(80 << 20)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    thread = threading.Thread(target=batches)
    thread.start()
    thread.join()
    print(json.dumps({"tuned": tuned, "later": sum(faults[2:]) / 4}))
""")


def test_a_batch_buffer_freed_in_a_thread_is_reused_not_faulted_in_again() -> None:
    default = _run(_BATCHES, "default")
    tuned = _run(_BATCHES, "tuned")
    assert tuned["tuned"] is True
    # 80 MB in 4 KiB pages is 20,480 faults (fewer with transparent huge pages); reused: none.
    assert default["later"] >= 1000, default
    assert tuned["later"] <= default["later"] / 20, (tuned, default)


def test_allocator_settings_made_by_the_user_are_kept() -> None:
    kept = _run(_BATCHES, "tuned", env={"MALLOC_ARENA_MAX": "4"})
    assert kept["tuned"] is False
    assert kept["later"] >= 1000, kept  # glibc's own behaviour, as without imgwatch


def test_release_gives_the_kept_memory_back() -> None:
    script = textwrap.dedent("""
        import json, threading
        from imgwatch import allocator
        assert allocator.tune()
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        start = rss()
        thread = threading.Thread(target=touched, args=(200 << 20,))
        thread.start()
        thread.join()
        kept = rss()
        allocator.release()
        print(json.dumps({"start": start, "kept": kept, "released": rss()}))
    """)
    result = _run(_MALLOC + script)
    assert result["kept"] - result["start"] >= 150, result  # kept for the next batch
    assert result["kept"] - result["released"] >= 150, result


def test_the_model_thread_gives_memory_back_when_idle() -> None:
    result = _run("""
        import json, time
        from concurrent.futures import ThreadPoolExecutor
        from imgwatch import allocator
        assert allocator.tune()
        from imgwatch.services.extractor import IDLE_RELEASE_S, VGG16Extractor
        from imgwatch.services.model_spec import WeightsSpec
        from imgwatch.samples import photo
        import numpy as np
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        pixels = [np.asarray(photo(i, (224, 224)).convert("RGB")) for i in range(8)]
        extractor = VGG16Extractor(WeightsSpec.parse("random:0"), precision="float", batch_size=8)
        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(extractor.embed_prepared, pixels))
            busy = rss()
            deadline = time.monotonic() + IDLE_RELEASE_S + 30
            while rss() > busy - 50 and time.monotonic() < deadline:
                time.sleep(0.2)
            print(json.dumps({"busy": busy, "idle": rss(), "after_s": IDLE_RELEASE_S}))
        finally:
            extractor.close()
    """)
    # A batch of 8 in fp32 keeps ~100 MB of activations (the first layers' outputs are 12.8 MB an image).
    assert result["busy"] - result["idle"] >= 50, result
