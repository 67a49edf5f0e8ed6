"""``imgwatch watch``: the daemon, in parts (see :mod:`imgwatch.daemon.core` for how they fit)."""

from imgwatch.daemon.core import Daemon
from imgwatch.daemon.lifecycle import SHUTDOWN_TIMEOUT_S

__all__ = ["SHUTDOWN_TIMEOUT_S", "Daemon"]
