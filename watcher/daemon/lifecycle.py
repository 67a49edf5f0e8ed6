"""Signals and systemd: the first SIGTERM/SIGINT asks for a clean stop, a second one leaves at once;
READY/STOPPING/WATCHDOG go to the service manager."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from imgwatch.notify import sd_notify, watchdog_interval

log = logging.getLogger(__name__)

#: A SIGTERM is answered with exit 0 within this bound (the systemd units allow a little more).
SHUTDOWN_TIMEOUT_S = 30.0


def install_signal_handlers(stop: Callable[[], None], stopping: Callable[[], bool]) -> None:
    """In the main thread only (Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping():
            # Second signal: leave now. Unfinished work is in the journal and the catalog.
            log.warning("second %s: exiting at once", name)
            os._exit(1)
        log.info("%s: finishing current work, then stopping", name)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


class Heartbeat:
    """systemd's watchdog: a ping every half of ``WATCHDOG_USEC``, from the main loop, so that a
    stuck loop (not only a dead process) gets the daemon restarted."""

    def __init__(self) -> None:
        self._every = watchdog_interval()
        self._last = 0.0

    def beat(self, now: float) -> None:
        if self._every and now - self._last > self._every:
            self._last = now
            sd_notify("WATCHDOG=1")

    def wait_limit(self, now: float) -> float | None:
        """How long the loop may sleep before the next ping is due."""
        return None if not self._every else max(0.0, self._last + self._every - now)


def ready(roots: int) -> None:
    sd_notify("READY=1", f"STATUS=watching {roots} root(s)")


def stopping() -> float:
    """Tell systemd, and return the deadline (monotonic) of the whole shutdown."""
    sd_notify("STOPPING=1")
    return time.monotonic() + SHUTDOWN_TIMEOUT_S - 5
