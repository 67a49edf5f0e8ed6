"""The CPUs this process may use: what thread pools should be sized to."""

from __future__ import annotations

import os


def cpus_we_may_run_on() -> int:
    """CPUs in this process's affinity mask (containers, ``taskset``, systemd's ``CPUAffinity=``),
    which may be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
