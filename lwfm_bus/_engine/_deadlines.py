"""Deadlines: a join's ``within`` window, announced when it closes.

A KV watch on join progress learns each window as the first upstream arrives; a
timer announces ``trigger.deadline`` when one closes (under an id the server
deduplicates, so every replica may announce it).  The work loop then judges that
event like any other, so an expiry is claimed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .._events import TriggerDeadline
from ._store import EngineStore, JoinProgress

__all__ = ["Deadlines"]

log = logging.getLogger("lwfm_bus.engine")


class Deadlines:
    """Watches join progress for ``within`` windows; announces each one that closes."""

    def __init__(
        self,
        store: EngineStore,
        site: str,
        active: Callable[[str], bool],
        publish: Callable[[Any, str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._site = site
        self._active = active  # is this trigger still waiting (not fired, expired or cancelled)?
        self._publish = publish
        self._heap: list[tuple[datetime, str, str]] = []
        self._changed = asyncio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        kv = self._store.joins
        assert kv is not None
        watcher = await kv.watchall()
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._timer)
            try:
                async for entry in watcher:
                    if entry is None or entry.value is None:
                        continue
                    try:
                        progress = JoinProgress.model_validate_json(entry.value)
                    except ValueError:
                        continue
                    if progress.deadline is not None:
                        heapq.heappush(self._heap, (progress.deadline, progress.trigger_id, entry.key))
                        self._changed.set()
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _timer(self) -> None:
        announced: set[str] = set()
        while True:
            self._changed.clear()
            if not self._heap:
                await self._changed.wait()
                continue
            when, trigger_id, _ = self._heap[0]
            wait = (when - datetime.now(UTC)).total_seconds()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._changed.wait()
                continue
            heapq.heappop(self._heap)
            if trigger_id in announced or not self._active(trigger_id):
                continue
            announced.add(trigger_id)
            try:
                await self._publish(
                    TriggerDeadline(
                        trigger_id=trigger_id, site=self._site, firing_key=trigger_id, deadline=when,
                    ),
                    f"deadline:{trigger_id}",
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - retried below: the window must not be forgotten
                log.warning("engine: could not announce the deadline of %s: %r", trigger_id, exc)
                announced.discard(trigger_id)
                heapq.heappush(self._heap, (when + timedelta(seconds=1), trigger_id, ""))
