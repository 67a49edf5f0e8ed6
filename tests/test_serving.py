"""The serving gate on real threads: a reindex switch gets in on a context that is never quiet, and a
thread already inside never waits behind it."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest

from imgwatch.config import Settings
from imgwatch.context import Context
from imgwatch.services.build import open_context
from imgwatch.services.files import LocalFileReader
from imgwatch.serving import Serving

BLOCK_S = 0.2
"""How long each user's own work inside ``use()`` takes."""
USERS = 3
GIVE_UP_BLOCKS = 10
"""A switch still waiting after this many of the users' longest blocks is taken as waiting for ever."""
DEADLOCK_S = 60.0
"""Only to end a test whose threads deadlocked: what it waits for takes microseconds."""


@pytest.fixture
def served(settings: Settings) -> Iterator[Context]:
    """A real context (catalog, Milvus Lite, no model: the gate never looks inside it)."""
    with open_context(settings, command="test", model=False) as ctx:
        yield ctx


def _thread(target: object, name: str) -> threading.Thread:
    # Not "imgwatch-*": a deadlocked thread of a failing test must not also fail the next test.
    thread = threading.Thread(target=target, name=f"test-{name}", daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_a_switch_gets_in_although_users_never_leave_the_context_quiet(
    served: Context, settings: Settings
) -> None:
    serving = Serving(served)
    replacement = dataclasses.replace(served, files=LocalFileReader(settings.max_file_bytes))
    room = threading.Condition()
    inside = 0
    most_inside = 0
    blocks: list[float] = []
    seen_after_switch: list[Context] = []
    switched = threading.Event()
    stop = threading.Event()

    def relieved() -> bool:
        return inside > 1 or stop.is_set()

    def user(offset: float) -> None:
        nonlocal inside, most_inside
        time.sleep(offset)
        while not stop.is_set():
            with serving.use() as ctx:
                started = time.monotonic()
                with room:
                    inside += 1
                    most_inside = max(most_inside, inside)
                    room.notify_all()
                time.sleep(BLOCK_S)  # the block's own work
                with room:
                    # Hand over: leave only once another user is in, so that the context is never
                    # quiet; a user that nobody relieves within another block leaves anyway.
                    room.wait_for(relieved, timeout=BLOCK_S)
                    inside -= 1
                    blocks.append(time.monotonic() - started)
                if switched.is_set():
                    seen_after_switch.append(ctx)

    users = [_thread(lambda i=i: user(i * BLOCK_S / USERS), f"user{i}") for i in range(USERS)]
    with room:
        room.wait_for(lambda: len(blocks) >= 2 * USERS, timeout=DEADLOCK_S)  # everybody is in the rhythm

    inside_during_switch: list[int] = []
    asked = time.monotonic()
    got_in: list[float] = []

    def switch() -> None:
        with serving.exclusive():
            got_in.append(time.monotonic())
            with room:
                inside_during_switch.append(inside)
            serving.replace(replacement)
        switched.set()

    switcher = _thread(switch, "switch")
    while not switched.is_set():
        with room:
            longest = max(blocks)
        if time.monotonic() - asked > GIVE_UP_BLOCKS * longest:
            break
        switched.wait(BLOCK_S / 4)
    if switched.is_set():
        # The users carry on, now on the new context.
        with room:
            room.wait_for(lambda: len(seen_after_switch) >= USERS, timeout=DEADLOCK_S)
    stop.set()
    switcher.join(DEADLOCK_S)
    for thread in users:
        thread.join(DEADLOCK_S)
    assert not switcher.is_alive() and not any(t.is_alive() for t in users)

    longest = max(blocks)
    assert most_inside >= 2  # the users really overlapped
    assert got_in, "the switch never got in"
    waited = got_in[0] - asked
    # Writer preference: the switch waits for the blocks under way when it asked, and no new one.
    assert waited <= 2 * longest, f"the switch waited {waited:.2f} s; the users' blocks last {longest:.2f} s"
    assert inside_during_switch == [0]
    assert seen_after_switch and all(ctx is replacement for ctx in seen_after_switch)


def test_a_thread_inside_enters_again_while_a_switch_waits(served: Context) -> None:
    """``use()`` is re-entrant: a nested use by a thread that holds it must not queue behind a
    waiting switch (which waits for that very thread)."""
    serving = Serving(served)
    outer_in = threading.Event()
    nested: list[Context] = []
    order: list[str] = []

    def holder() -> None:
        with serving.use() as outer:
            outer_in.set()
            deadline = time.monotonic() + DEADLOCK_S
            while not serving.switch_waiting and time.monotonic() < deadline:
                time.sleep(0.01)
            with serving.use() as inner:
                nested.append(inner)
            assert inner is outer
            order.append("holder out")

    def switch() -> None:
        with serving.exclusive():
            order.append("switch in")

    first = _thread(holder, "holder")
    outer_in.wait(DEADLOCK_S)
    second = _thread(switch, "switch")
    first.join(DEADLOCK_S)
    second.join(DEADLOCK_S)
    assert not first.is_alive(), "the nested use() deadlocked behind the waiting switch"
    assert not second.is_alive()
    assert nested == [served]
    assert order == ["holder out", "switch in"]


def test_new_users_wait_behind_a_waiting_switch_and_then_see_the_new_context(
    served: Context, settings: Settings
) -> None:
    serving = Serving(served)
    replacement = dataclasses.replace(served, files=LocalFileReader(settings.max_file_bytes))
    release = threading.Event()
    holding = threading.Event()
    late: list[Context] = []
    order: list[str] = []

    def holder() -> None:
        with serving.use():
            holding.set()
            release.wait(DEADLOCK_S)
        order.append("holder out")

    def switch() -> None:
        with serving.exclusive():
            order.append("switch in")
            serving.replace(replacement)

    def latecomer() -> None:
        with serving.use() as ctx:
            late.append(ctx)
            order.append("latecomer in")

    threads = [_thread(holder, "holder")]
    holding.wait(DEADLOCK_S)
    threads.append(_thread(switch, "switch"))
    deadline = time.monotonic() + DEADLOCK_S
    while not serving.switch_waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    threads.append(_thread(latecomer, "latecomer"))
    release.set()
    for thread in threads:
        thread.join(DEADLOCK_S)
    assert not any(t.is_alive() for t in threads)
    assert order == ["holder out", "switch in", "latecomer in"]
    assert late == [replacement]


def test_the_switch_thread_may_use_the_context_it_holds(served: Context) -> None:
    serving = Serving(served)
    done: list[str] = []

    def nested() -> None:
        with serving.exclusive() as held, serving.use() as ctx:
            assert ctx is held
            done.append("use inside exclusive")
        # The other way round would wait for itself for ever: refused instead.
        with serving.use(), pytest.raises(RuntimeError, match="wait for itself"), serving.exclusive():
            pass
        done.append("exclusive inside use refused")

    thread = _thread(nested, "nested")
    thread.join(DEADLOCK_S)
    assert not thread.is_alive(), "deadlocked"
    assert done == ["use inside exclusive", "exclusive inside use refused"]
