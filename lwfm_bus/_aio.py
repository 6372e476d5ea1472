"""Stopping asyncio tasks that may lose a cancellation, within a bound.

On Python 3.11 nats-py awaits its replies inside ``asyncio.wait_for``, and
``wait_for`` returns the reply instead of raising when a cancel lands just as the
reply arrives: the cancelled task goes on as if nothing had happened.  A task cancelled
once and then awaited can therefore keep its owner waiting for ever (a local job's
supervisor reporting a state, say, would go on to wait for the job to end).  Code
that runs in an anyio task group is safe -- anyio cancels again at every await -- and
this does the same for plain asyncio tasks: cancel, wait a little, cancel again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], *, within: float = 10.0) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them, repeating the cancel for any that swallowed it.

    Returns the tasks still running after ``within`` seconds (none, unless one shields
    itself from every cancel); a task's own exception is left on it for its owner.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    pending = {t for t in tasks if not t.done()}
    pause = 0.01
    while pending:
        for task in pending:
            task.cancel()
        left = end - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(pause, left))
        pause = min(2 * pause, 0.5)  # a swallowed cancel is rare: re-cancel soon, then seldom
    return pending
