"""Whether a daemon serves the data dir: the commands that find one go through it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.config import Settings
    from imgwatch.config.client import ClientSettings
    from imgwatch.ipc import DaemonClient


def running_daemon(settings: Settings | ClientSettings, wait: float = 120.0) -> DaemonClient | None:
    """A client for the daemon serving this data dir, or None when no daemon runs.

    A daemon that holds the data dir but does not answer yet is starting (loading the model):
    wait for it rather than fail on the lock.
    """
    from imgwatch.ipc import DaemonClient, DaemonUnavailableError
    from imgwatch.lock import lock_holder

    deadline = time.monotonic() + wait
    while True:
        holder = lock_holder(settings.data_dir)
        if holder is None or holder.command != "watch":
            return None
        client = DaemonClient(settings.data_dir)
        try:
            client.status()
        except DaemonUnavailableError:
            if time.monotonic() > deadline:
                raise ImgwatchError(
                    f"the daemon (PID {holder.pid}) holds {settings.data_dir} but does not answer "
                    "on its socket"
                ) from None
            time.sleep(0.2)
            continue
        return client
