"""The context that handlers and searches use *now*, and the gate that lets a reindex swap it.

Handlers, scans, jobs and searches hold the gate shared while they work; a reindex takes it alone
for the moment of its switch (a final catch-up and one catalog transaction), so no handler writes to
the old collection after the catalog says the new one serves.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from imgwatch.context import Context


class Serving:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._changed = threading.Condition()
        self._users = 0
        self._exclusive = False

    @property
    def current(self) -> Context:
        """The context of this moment, for reads that tolerate a switch (the catalog is shared)."""
        return self._ctx

    @contextlib.contextmanager
    def use(self) -> Iterator[Context]:
        """The current context, kept current until the block ends. Re-entrant."""
        with self._changed:
            while self._exclusive:
                self._changed.wait()
            self._users += 1
            ctx = self._ctx
        try:
            yield ctx
        finally:
            with self._changed:
                self._users -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Context]:
        """Wait until nobody uses the context, then keep everybody out until the block ends.

        New users are not held back while this waits (a long reconcile must not stall events): the
        switch happens at the first quiet moment.
        """
        with self._changed:
            while self._exclusive or self._users:
                self._changed.wait()
            self._exclusive = True
        try:
            yield self._ctx
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()

    def replace(self, ctx: Context) -> None:
        """Serve ``ctx`` from now on; only inside :meth:`exclusive`."""
        assert self._exclusive, "replace() outside exclusive()"
        self._ctx = ctx
