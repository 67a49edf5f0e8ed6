"""systemd's notify protocol (READY, STOPPING, WATCHDOG, STATUS) without a dependency: one datagram."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def sd_notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``) to the service manager; False when not run under one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as e:
        log.warning("cannot notify the service manager at %r: %s", address, e)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between the watchdog pings the service manager expects of this process (half its
    timeout, as sd_watchdog_enabled(3) advises), or None when it expects none."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        timeout_us = int(usec)
        if pid and int(pid) != os.getpid():
            return None  # set for another process, one that started this one
    except ValueError:
        # A unit's typo must not stop the daemon; without pings, systemd restarts it, which shows.
        log.warning("ignoring WATCHDOG_USEC=%r, WATCHDOG_PID=%r: not whole numbers", usec, pid)
        return None
    return timeout_us / 2_000_000 if timeout_us > 0 else None
