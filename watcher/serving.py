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
    """A readers-writer gate with writer preference, re-entrant for the threads inside it."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._changed = threading.Condition()
        self._holders: dict[int, int] = {}
        """Thread id -> depth of its ``use()`` blocks: a thread already inside may always go deeper."""
        self._switch: int | None = None
        """The thread inside :meth:`exclusive`, if any."""
        self._switches_waiting = 0

    @property
    def current(self) -> Context:
        """The context of this moment, for reads that tolerate a switch (the catalog is shared)."""
        return self._ctx

    @property
    def switch_waiting(self) -> bool:
        """A switch waits for the users inside to leave (new users wait behind it)."""
        with self._changed:
            return self._switches_waiting > 0

    @contextlib.contextmanager
    def use(self) -> Iterator[Context]:
        """The current context, kept current until the block ends. Re-entrant.

        A new user waits while a switch waits or runs, so that a busy daemon cannot keep a switch
        out for ever. A thread already inside (or the switch's own thread) goes straight in: the
        switch waits for that thread, so holding it back would deadlock. For the same reason a
        block must never wait for *another* thread that is about to enter ``use()``.
        """
        me = threading.get_ident()
        with self._changed:
            if me not in self._holders and self._switch != me:
                while self._switch is not None or self._switches_waiting:
                    self._changed.wait()
            self._holders[me] = self._holders.get(me, 0) + 1
            ctx = self._ctx
        try:
            yield ctx
        finally:
            with self._changed:
                if self._holders[me] > 1:
                    self._holders[me] -= 1
                else:
                    del self._holders[me]
                    self._changed.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Context]:
        """Wait until nobody uses the context, then keep everybody out until the block ends.

        From the moment this starts waiting, new users wait behind it: it waits only for the blocks
        already under way (and for whatever their threads nest inside them).
        """
        me = threading.get_ident()
        with self._changed:
            if me in self._holders:
                raise RuntimeError("exclusive() inside this thread's use() would wait for itself")
            self._switches_waiting += 1
            try:
                while self._switch is not None or self._holders:
                    self._changed.wait()
            finally:
                self._switches_waiting -= 1
                # Users held back for this switch look again (it may have given up waiting).
                self._changed.notify_all()
            self._switch = me
        try:
            yield self._ctx
        finally:
            with self._changed:
                self._switch = None
                self._changed.notify_all()

    def replace(self, ctx: Context) -> None:
        """Serve ``ctx`` from now on; only inside :meth:`exclusive`."""
        assert self._switch == threading.get_ident(), "replace() outside exclusive()"
        self._ctx = ctx
