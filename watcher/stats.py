"""The daemon's own counters for ``status``: incremented from several threads, read from another."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any


class DaemonStats:
    """Events received by source, handler outcomes, retries.

    ``Counter[key] += 1`` is a read, an add and a write: two threads (watchdog observers, the
    webhook, the handler pool) can lose each other's updates, and copying a Counter while another
    thread adds a key raises "dictionary changed size during iteration". One lock serves both.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._retries = 0
        self._last_error: dict[str, str] | None = None

    def received(self, source: str) -> None:
        with self._lock:
            self._received[source] += 1

    def outcome(self, outcome: str) -> None:
        with self._lock:
            self._outcomes[outcome] += 1

    def retried(self, error: str = "") -> None:
        """Work failed for a reason outside the image (a store, the disk) and will be retried."""
        with self._lock:
            self._retries += 1
            if error:
                self._last_error = {"error": error, "at": datetime.now(UTC).isoformat(timespec="seconds")}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events_received": dict(self._received),
                "outcomes": dict(self._outcomes),
                "retries": self._retries,
                "last_retried_error": self._last_error,
            }
