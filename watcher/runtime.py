"""Dispatch: hand each event to its handler, concurrently, and never let one failure stop the rest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from imgwatch.context import Context
from imgwatch.events import ImageEvent, Outcome, paths_of
from imgwatch.handlers import HANDLERS

log = logging.getLogger(__name__)

OnHandled = Callable[[ImageEvent, Outcome], None]


def handle(event: ImageEvent, ctx: Context) -> Outcome:
    """Run the handler registered for ``event``'s exact type, alone on the paths it touches (waiting
    while another thread handles one of them). Its errors are raised."""
    with ctx.paths.hold(paths_of(event)):
        return HANDLERS[type(event)](event, ctx)


def dispatch(event: ImageEvent, ctx: Context) -> Outcome:
    """Run the handler registered for ``event``'s exact type.

    An unexpected error (a store that went away, a bug) is logged and reported as ``FAILED``; the
    file's catalog row stays ``pending``, so the next run picks it up again.
    """
    try:
        return handle(event, ctx)
    except Exception:
        log.exception("handling %r failed; it stays pending and will be retried", event)
        return Outcome.FAILED


def dispatch_all(
    events: Iterable[ImageEvent], ctx: Context, *, workers: int, on_handled: OnHandled | None = None
) -> None:
    """Handle ``events`` on ``workers`` threads. Events must concern distinct paths.

    Worker threads do the decoding (Pillow releases the GIL), so with more workers than the model's
    batch size the model thread always finds a full batch waiting.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgwatch-handler")
    try:
        futures = {pool.submit(dispatch, event, ctx): event for event in events}
        for future, event in futures.items():
            outcome = future.result()
            if on_handled is not None:
                on_handled(event, outcome)
    finally:
        # On Ctrl-C, let the running handlers finish (each leaves a consistent state) but start no
        # more: the files not reached stay as they were, and the next run picks them up.
        pool.shutdown(wait=True, cancel_futures=True)
