"""A site's health, as its agent sees it, published when it changes.

While slurmctld was down, ``status`` said PENDING or RUNNING with no hint, and the only
sign was a WARNING on the stderr of whichever process watched the site.  Now every
agent keeps its site's health -- UP, DEGRADED with the reason (the scheduler does not
answer, its output cannot be read), DOWN with the reason (the site cannot be opened)
-- and publishes a ``lwfm.site.heartbeat`` event each time it changes, on the site's
heartbeat subject: trouble, and the recovery from it (a site is UP until said otherwise,
so an agent that opens its site at once publishes nothing).  The last one on that
subject is the site's health and its time is when it began: ``status``, ``workflow
show`` and the dashboard read it from the stream.

Only changes are published, not a beat per interval: the stream keeps every event for
ever and an index replays them all.  Whether an agent is alive *now* is a ping away.
A change is a fact like a job's state: retried until the server stores it, under an id
(this agent's run, and the change's number) that a retry repeats, so it is stored once.
"""

from __future__ import annotations

import logging
import uuid

import anyio

from .._bus._eventbus import EventBus
from .._errors import BusClosedError, PublishError
from .._events import SiteHeartbeat, SiteStatus, make_event
from ._report import publish_until_acked

__all__ = ["HealthKeeper"]

log = logging.getLogger("lwfm_bus.health")

_MAX_INFO = 512  # a reason is one line: an adapter's error may be a page of scheduler output


class HealthKeeper:
    """One agent's view of its site's health; :meth:`run` publishes each change."""

    def __init__(self, bus: EventBus, site: str, agent: str, adapter: str) -> None:
        self._bus = bus
        self._site = site
        self._agent = agent
        self._adapter = adapter[:128]
        self._run_id = uuid.uuid4().hex[:12]  # this agent's run: ids of its changes never meet another's
        self._changes = 0
        self._current: tuple[SiteStatus, str | None] | None = None
        # A site is healthy until said otherwise: a first UP is not news, and every test,
        # tool and replay would otherwise meet one event per agent start.
        self._published: tuple[SiteStatus, str | None] | None = (SiteStatus.UP, None)
        self._changed = anyio.Event()
        self._stopping = False

    @property
    def status(self) -> SiteStatus | None:
        return None if self._current is None else self._current[0]

    def set(self, status: SiteStatus, reason: str | None = None) -> None:
        """The site's health now (said by the agent, or by its adapter through the runtime)."""
        info = None if reason is None else " ".join(reason.split())[:_MAX_INFO] or None
        if (status, info) == self._current:
            return
        self._current = (status, info)
        self._changed.set()

    async def run(self) -> None:
        """Publish every change, the latest first when several came while one was being stored."""
        try:
            while True:
                await self._changed.wait()
                self._changed = anyio.Event()
                current = self._current
                if current is None or current == self._published:
                    continue
                self._changes += 1
                status, info = current
                beat = SiteHeartbeat(site=self._site, adapter=self._adapter, status=status, info=info)
                event = make_event(beat, source=f"/agent/{self._agent}", id=f"health:{self._run_id}:{self._changes}")
                try:
                    await publish_until_acked(self._bus, event, stopping=lambda: self._stopping)
                except (BusClosedError, PublishError) as exc:
                    log.info("site %s: health %s not recorded: %s", self._site, status.value, exc)
                    continue
                self._published = current
        finally:
            self._stopping = True
