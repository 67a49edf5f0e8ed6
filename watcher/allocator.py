"""glibc's allocator, set for a process that runs VGG16: big buffers reused, not mapped anew.

A batch of 16 through VGG16 allocates activations of tens of MB. Under glibc's defaults, those above
its mmap threshold (at most 32 MB) are mapped for each batch and unmapped after it, and the heap's
free top is given back whenever it passes the trim threshold, so every batch faults its buffers in
again, page by page: 200,000-650,000 minor faults and ~1 s of system time per 256 images, 10-18 % of
the int8 model's time (docs/decisions.md, 2026-12-04). One arena for all threads matters as much: a
thread's own arena grows in heaps of at most 64 MB, and a buffer bigger than that is mapped anew
whatever the threshold, and the model runs in its own thread.

So :func:`tune` (called once, before any thread starts: the command's entry point) puts every
thread on the main arena and raises both thresholds; freed buffers stay in the process for the next
batch. :func:`release` gives what is free back to the system: the model thread calls it when it has
been idle for a while, so a daemon between bursts holds no more than it did before.

Anything but glibc (musl, macOS): both do nothing. Nor does :func:`tune` where the environment
already sets the allocator (``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES=glibc.malloc...``): a user who
wants glibc's defaults back sets one of those, e.g. ``MALLOC_ARENA_MAX=8``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from functools import cache

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Buffers up to this size come from the heap, not a mapping of their own (VGG16's largest, a batch of
#: 16's first activations in fp32, is 205 MB).
MMAP_THRESHOLD = 256 * 1024 * 1024
#: Free memory at the heap's top up to this size is kept for the next batch (:func:`release` frees it).
TRIM_THRESHOLD = 1024 * 1024 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None  # not glibc (musl has no gnu_get_libc_version)
    return libc


def tune() -> bool:
    """Set the allocator for VGG16's batches; whether it was (glibc only). Call before threads start:
    a thread that already has an arena of its own keeps it.

    Settings the user made for the allocator (``MALLOC_*`` or ``glibc.malloc`` tunables in the
    environment) are kept: then nothing is changed here."""
    libc = _glibc()
    if libc is None or _user_settings():
        return False
    # The thresholds first: one arena without them is contention for nothing. A glibc that refuses
    # a threshold this high (older ones capped it at 32 MB) gets its highest.
    mmap_set = any(libc.mallopt(_M_MMAP_THRESHOLD, value) == 1 for value in (MMAP_THRESHOLD, 32 << 20))
    if not (mmap_set and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1):
        log.debug("glibc refused an allocator threshold; the arenas stay as they were")
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, 1) == 1)


def available() -> bool:
    """Whether this process's allocator is glibc's (the one :func:`tune` sets)."""
    return _glibc() is not None


def _user_settings() -> list[str]:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return [name for name in os.environ if name.startswith("MALLOC_")] + (
        ["GLIBC_TUNABLES"] if "glibc.malloc." in tunables else []
    )


def release() -> None:
    """Give the allocator's free memory back to the system (``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
