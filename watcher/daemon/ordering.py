"""Deletes and moves, applied in arrival order where order matters.

An op waits for earlier ops and for work in flight on overlapping paths, and runs past unrelated
ones. Deletions are held a moment: a file moved to another root arrives as a delete here and a new
file there, and can take its vector along only if the delete waits for the new file to be read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgwatch.events import DirectoryDeleted, ImageDeleted, ImageEvent, paths_of
from imgwatch.pathlocks import overlap

#: Deletions wait this long, so that a file moved to another root can take its vector along.
DELETE_HOLD_S = 0.5
MAX_DELETE_HOLD_S = 10.0
DELETIONS = (ImageDeleted, DirectoryDeleted)


@dataclass(eq=False)
class Op:
    """A delete or move, applied in arrival order."""

    event: ImageEvent
    journal_ids: list[int]
    due: float
    received: float
    attempts: int = 0

    @property
    def paths(self) -> tuple[str, ...]:
        return paths_of(self.event)


class OrderedOps:
    def __init__(self) -> None:
        self._ops: deque[Op] = deque()

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(list(self._ops))

    def add(self, event: ImageEvent, ids: list[int], now: float) -> None:
        hold = DELETE_HOLD_S if isinstance(event, DELETIONS) else 0.0
        self._ops.append(Op(event, ids, now + hold, now))

    def cancel_deletion(self, path: str) -> list[int]:
        """A file deleted and then written again (an editor's "rename to backup, write anew") is
        here: drop the queued deletion; returns its journal rows."""
        doomed = [op for op in self._ops if isinstance(op.event, ImageDeleted) and op.event.path == path]
        for op in doomed:
            self._ops.remove(op)
        return [journal_id for op in doomed for journal_id in op.journal_ids]

    def remove(self, op: Op) -> None:
        self._ops.remove(op)

    def retry_first(self, op: Op) -> None:
        """A failed op goes back to the front: later ops on its paths keep waiting for it."""
        self._ops.appendleft(op)

    def deletions(self) -> list[Op]:
        return [op for op in self._ops if isinstance(op.event, DELETIONS)]

    def paths(self) -> list[str]:
        return [path for op in self._ops for path in op.paths]

    def take_due(self, now: float, blocked: list[str], waits: Callable[[Op], bool]) -> list[Op]:
        """Take the ops that may run now: due, not waiting, and touching no path that is ``blocked``
        (in flight) or that an earlier op still waiting touches."""
        blocked = list(blocked)
        ready = []
        for op in list(self._ops):
            if op.due > now or overlap(op.paths, blocked) or waits(op):
                blocked.extend(op.paths)
                continue
            self._ops.remove(op)
            ready.append(op)
            blocked.extend(op.paths)
        return ready

    def pull_forward(self, now: float) -> None:
        for op in self._ops:
            if op.attempts and op.due > now:
                op.due = now

    def next_due(self, after: float) -> float | None:
        """The first moment after ``after`` at which some work becomes due."""
        return min((due for due in (op.due for op in self._ops) if due > after), default=None)

    def journal_ids(self) -> Iterator[int]:
        for op in self._ops:
            yield from op.journal_ids
