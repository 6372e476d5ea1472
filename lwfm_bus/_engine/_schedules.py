"""Schedules: a timer per replica that announces each tick, so a tick starts its job once.

The machinery is the ``within`` deadlines' (:mod:`._deadlines`): a heap of the next
tick of each schedule, one timer sleeping until the earliest, and an announcement
(``trigger.tick``) under an id the server deduplicates (``tick:<trigger>/<tick>``), so
every replica may announce the same tick.  The work loop then judges that event like
any other, and the firing -- whose key holds the tick -- is claimed exactly once in
the server.  Nothing here scans the triggers: the feed tells which schedule changed
(registered, ticked, withdrawn), and the heap gives the next one due.

Restarts.  A tick's announcement is in the stream, so the feed gives each schedule's
latest announced tick when a replica starts; a tick announced but not yet fired is the
work loop's (its event is redelivered).  The ticks that came meanwhile, while no engine
ran, are the schedule's ``catchup`` question: all of them (at most ``MAX_CATCHUP``, the
latest), or only the latest one.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .._events import TriggerTick
from .._triggers import tick_key
from ._matcher import TriggerIndex

__all__ = ["Schedules"]

log = logging.getLogger("lwfm_bus.engine")

_RETRY = timedelta(seconds=1)


class Schedules:
    """Announces each schedule's ticks as they come (and the missed ones, as ``catchup`` says)."""

    def __init__(self, index: TriggerIndex, site: str, publish: Callable[[Any, str], Awaitable[None]]) -> None:
        self._index = index
        self._site = site
        self._publish = publish
        self._heap: list[tuple[datetime, str]] = []
        self._next: dict[str, datetime] = {}  # the live heap entry of each schedule (others are stale)
        self._announced: dict[str, datetime] = {}  # the latest tick this replica announced
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def changed(self, trigger_id: str) -> None:
        """The feed registered, ticked or withdrew this schedule: look at it again."""
        self._dirty.add(trigger_id)
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        for watch in self._index.schedules():
            self._dirty.add(watch.trigger_id)
        task_status.started()
        while True:
            self._wake.clear()
            while self._dirty:
                await self._review(self._dirty.pop())
            now = datetime.now(UTC)
            while self._heap and self._heap[0][0] <= now:
                when, trigger_id = heapq.heappop(self._heap)
                if self._next.get(trigger_id) == when:
                    del self._next[trigger_id]
                    self._dirty.add(trigger_id)
            if self._dirty:
                continue
            wait = (self._heap[0][0] - now).total_seconds() if self._heap else None
            with anyio.move_on_after(wait if wait is not None else float("inf")):
                await self._wake.wait()

    async def _review(self, trigger_id: str) -> None:
        """Announce what is due of one schedule, then put its next tick on the heap."""
        watch = self._index.schedule(trigger_id)
        if watch is None:  # withdrawn: its heap entry goes stale
            self._next.pop(trigger_id, None)
            self._announced.pop(trigger_id, None)
            return
        timing = watch.timing
        known = [t for t in (watch.last_tick, self._announced.get(trigger_id)) if t is not None]
        after = max(known) if known else watch.registered_at
        now = datetime.now(UTC)
        retry_at: datetime | None = None
        for tick in timing.due(after, now, watch.registered_at):
            key = tick_key(trigger_id, tick)
            try:
                await self._publish(
                    TriggerTick(
                        trigger_id=trigger_id, site=self._site, workflow_id=watch.workflow_id, firing_key=key,
                        tick=tick,
                    ),
                    f"tick:{key}",
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - retried below: a tick must not be forgotten
                log.warning("engine: could not announce tick %s of %s: %r", tick, trigger_id, exc)
                retry_at = now + _RETRY
                break
            self._announced[trigger_id] = tick
            after = tick
        nxt = retry_at or timing.next_after(max(after, now), watch.registered_at)
        if nxt is None:
            self._next.pop(trigger_id, None)  # the schedule has ended
            return
        if self._next.get(trigger_id) != nxt:
            self._next[trigger_id] = nxt
            heapq.heappush(self._heap, (nxt, trigger_id))
