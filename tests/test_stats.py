"""The daemon's counters: exact under concurrent increments, readable while they change.

On CPython 3.11 an unlocked Counter survived this stress too (the GIL makes its increments atomic
in practice); the lock is what makes it hold by contract, on free-threaded builds as well."""

from __future__ import annotations

import sys
import threading

from imgwatch.stats import DaemonStats


def test_concurrent_counts_are_exact_and_snapshots_never_fail() -> None:
    stats = DaemonStats()
    threads, per_thread = 8, 20_000
    errors: list[BaseException] = []
    done = threading.Event()

    def count(n: int) -> None:
        for i in range(per_thread):
            stats.outcome(f"kind{i % 50}")  # new keys appear while the reader copies
            stats.received("fs" if n % 2 else "webhook")
            stats.retried()

    def read() -> None:
        while not done.is_set():
            try:
                snapshot = stats.snapshot()
                sum(snapshot["outcomes"].values())
            except BaseException as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up at once
    try:
        reader = threading.Thread(target=read)
        reader.start()
        workers = [threading.Thread(target=count, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(interval)

    snapshot = stats.snapshot()
    assert errors == []
    assert sum(snapshot["outcomes"].values()) == threads * per_thread
    assert snapshot["events_received"] == {"fs": 4 * per_thread, "webhook": 4 * per_thread}
    assert snapshot["retries"] == threads * per_thread
