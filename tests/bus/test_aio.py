"""Tasks that lose a cancellation are still stopped (Python 3.11 and nats-py's ``wait_for``).

The lost cancel cannot be produced on demand (it needs a reply to arrive in the same
loop turn as the cancel), so these tasks swallow cancels on purpose, as nats-py does.
"""

from __future__ import annotations

import asyncio

from lwfm_bus._aio import cancel_and_wait


async def _swallows(cancels: int, heard: list[int], waiting: asyncio.Event) -> None:
    for _ in range(cancels):
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            heard.append(1)  # lost, as in nats-py's wait_for
    waiting.set()
    await asyncio.Event().wait()


async def test_a_task_that_swallows_cancels_is_cancelled_again_until_it_ends() -> None:
    heard: list[int] = []
    waiting = [asyncio.Event() for _ in range(3)]
    tasks = [asyncio.ensure_future(_swallows(n, heard, w)) for n, w in zip((0, 1, 3), waiting, strict=True)]
    for w in waiting:
        await w.wait()
    assert await cancel_and_wait(tasks, within=10) == set()
    assert all(t.cancelled() for t in tasks)
    assert len(heard) == 4  # every swallowed cancel was followed by another


async def test_the_wait_is_bounded_for_a_task_that_ignores_every_cancel() -> None:
    release, started = asyncio.Event(), asyncio.Event()
    ignored: list[int] = []

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                ignored.append(1)

    task = asyncio.ensure_future(stubborn())
    await started.wait()
    assert await cancel_and_wait([task], within=0.3) == {task}
    assert ignored and not task.done()
    release.set()
    await task
