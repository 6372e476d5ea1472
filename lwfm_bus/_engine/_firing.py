"""Firing: claim, submit, announce, settle -- exactly once, across replicas and crashes.

A firing is claimed by creating its key in the ``lwfm_firings`` bucket; only one
replica wins.  The downstream job id is derived from the firing key, and submitting
is storing one submission for the target site's agents, which the server refuses a
second time for one job id; so a replica that finishes a dead replica's claim (on
redelivery) never starts a second job.  Then the outcome is announced
(``trigger.fired``, ``expired`` or ``failed``, each with an id the server
deduplicates) and the claim is settled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import anyio
import nats.errors
from nats.aio.msg import Msg

from .._bus._eventbus import EventBus
from .._errors import LwfmBusError
from .._events import TriggerExpired, TriggerFailed, TriggerFired, make_event
from .._identity import SCHEDULE_TICK_ENV, TRIGGER_DATA_ENV
from .._jobs import JobContext, JobDefn
from .._sites._dispatch import Dispatcher
from .._triggers import Downstream, JoinTrigger, Trigger, arrival_of, downstream_job_id, firing_key, tick_of
from ._feed import TriggerFeed
from ._settings import EngineConfig, EngineStats
from ._store import EngineStore, FiringRecord, FiringState

__all__ = ["Firing", "settle"]

log = logging.getLogger("lwfm_bus.engine")


class Firing:
    """Turns a judged condition into one claimed, submitted, announced and settled firing."""

    def __init__(
        self,
        bus: EventBus,
        dispatcher: Dispatcher,
        feed: TriggerFeed,
        store: EngineStore,
        config: EngineConfig,
        stats: EngineStats,
    ) -> None:
        self._bus = bus
        self._dispatcher = dispatcher  # a firing is one stored submission for the target site
        self._feed = feed
        self._store = store
        self.config = config
        self.stats = stats
        # Firings this replica is dispatching now: a redelivery of their event (it outlived
        # the ack wait) must not take over a claim that is not dead, only busy.
        self._dispatching: dict[str, asyncio.Event] = {}

    @property
    def _site(self) -> str:
        return self._bus.config.site

    async def fire(
        self,
        trigger_id: str,
        reg_seq: int,
        *,
        outcome: str = "fire",
        data_id: str | None = None,
        tick: datetime | None = None,
        parents: tuple[str, ...],
        causes: tuple[str, ...],
        workflow_id: str | None,
        redelivered: bool,
        msg: Msg,
        reason: str | None = None,
    ) -> None:
        """Claim this firing and carry it through, unless another replica has it or it is settled."""
        trigger = await self._feed.definition(trigger_id, reg_seq)
        key = firing_key(trigger, data_id, tick)
        expire = outcome == "expire"
        target = _target(trigger, expire)
        record = FiringRecord(
            firing_key=key,
            trigger_id=trigger_id,
            outcome="expire" if expire else "fire",
            job_id=downstream_job_id(trigger, key, fallback=expire) if target is not None else None,
            workflow_id=(target.workflow_id if target else None) or trigger.workflow_id or workflow_id,
            parent_ids=parents,
            cause_event_ids=causes[:64],
            reason=reason,
            claimed_by=self.config.name,
        )
        busy = self._dispatching.get(key)
        if busy is not None:
            # This replica is dispatching it now (its event outlived the ack wait): let that
            # finish, then judge by the claim as it is then -- never ack past a live dispatch.
            await busy.wait()
        won, stored, revision = await self._store.claim(record)
        self._fault("after-claim")
        if not won:
            if stored.state is not FiringState.CLAIMED or not redelivered:
                # Settled, or another replica holds a live claim: its own message is
                # redelivered (and finishes the claim) if that replica dies.
                self.stats.duplicates_skipped += 1
                return
            record = stored
        done = self._dispatching[key] = asyncio.Event()
        try:
            await self._dispatch(trigger, record, revision, msg)
        finally:
            del self._dispatching[key]
            done.set()

    async def _dispatch(self, trigger: Trigger, record: FiringRecord, revision: int, msg: Msg) -> None:
        expire = record.outcome == "expire"
        target = _target(trigger, expire)
        if target is not None and record.job_id is not None:
            error = await self._submit_with_retries(trigger, record, target, msg)
            if error is not None:
                await self.publish(
                    TriggerFailed(
                        trigger_id=trigger.trigger_id, site=self._site, workflow_id=trigger.workflow_id,
                        reason=error[:4000], attempts=self.config.dispatch_attempts, firing_key=record.firing_key,
                    ),
                    f"failed:{record.firing_key}",
                )  # fmt: skip
                await self._store.settle(record, FiringState.FAILED, revision, reason=error[:4000])
                self.stats.failed += 1
                return
        self._fault("after-submit")
        if expire:
            await self.publish(
                TriggerExpired(
                    trigger_id=trigger.trigger_id, site=self._site, workflow_id=trigger.workflow_id,
                    reason=(record.reason or "expired")[:4000], fallback_job_id=record.job_id if target else None,
                    firing_key=record.firing_key,
                ),
                f"expired:{record.firing_key}",
            )  # fmt: skip
            self.stats.expired += 1
        else:
            await self.publish(
                TriggerFired(
                    trigger_id=trigger.trigger_id, site=self._site, workflow_id=trigger.workflow_id,
                    firing_key=record.firing_key, downstream_job_id=record.job_id,
                    parent_job_ids=record.parent_ids, cause_event_ids=record.cause_event_ids,
                ),
                f"fired:{record.firing_key}",
            )  # fmt: skip
            self.stats.fired += 1
        self._fault("after-fired")
        await self._store.settle(record, FiringState.DONE, revision)

    async def _submit_with_retries(
        self, trigger: Trigger, record: FiringRecord, target: Downstream, msg: Msg
    ) -> str | None:
        """Submit the job, retrying with backoff; the last error if every attempt failed."""
        delay = self.config.dispatch_backoff_s
        last = "no attempt was made"
        assert record.job_id is not None
        for attempt in range(1, self.config.dispatch_attempts + 1):
            self.stats.dispatch_calls += 1
            try:
                job = _with_arrival(trigger, record, target.job)
                ctx = JobContext(
                    job_id=record.job_id, site=target.site, workflow_id=record.workflow_id, name=job.label(),
                    parent_ids=record.parent_ids,
                )  # fmt: skip
                await self._dispatcher.submit_job(ctx, job)  # one stored submission; the site's agents run it
                self.stats.dispatch_latency.observe(_since_stored(msg))
                return None
            except Exception as exc:  # noqa: BLE001 - every failure is retried, then reported
                last = _in_words(exc)
                log.warning("trigger %s: dispatch attempt %d failed: %s", trigger.trigger_id, attempt, last)
            if attempt < self.config.dispatch_attempts:
                await settle(msg.in_progress())
                await anyio.sleep(delay)
                delay *= 2
        ctx = JobContext(
            job_id=record.job_id, site=target.site, workflow_id=record.workflow_id, name=target.job.label(),
            parent_ids=record.parent_ids,
        )  # fmt: skip
        await self._dispatcher.report_unsubmitted(ctx, last)
        return last

    async def publish(self, payload: Any, event_id: str) -> None:
        """Announce an engine event (an outcome, a deadline) under an id the server deduplicates."""
        await self._bus.publish(make_event(payload, source=f"/sites/{self._site}/engine", id=event_id))

    def _fault(self, point: str) -> None:
        if point in self.config.crash_at:
            log.warning("engine: crash point %s reached; killing this process", point)
            os.kill(os.getpid(), signal.SIGKILL)


def _since_stored(msg: Msg) -> float:
    """Seconds since the server stored the event being judged (the upstream event), by its clock.

    The stream's time, not the event's own ``time``: one clock for every event (a remote
    job's host may be skewed), and an imported event counts from its arrival here.
    """
    try:
        stored = msg.metadata.timestamp
    except (nats.errors.NotJSMessageError, ValueError, IndexError, AttributeError):
        return 0.0
    return time.time() - stored.timestamp()


def _in_words(exc: Exception) -> str:
    """Why a dispatch failed, as the trigger's reason and the job's FAILED line say it.

    Our own errors' messages say it in words; a class name in front of them
    (``ConfigError: unknown site ...``; once ``_AdapterRefused: ...``) reads as a crash.
    Another library's error keeps its name only when it has no message of its own.
    """
    if isinstance(exc, LwfmBusError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    return str(exc) or type(exc).__name__


def _with_arrival(trigger: Trigger, record: FiringRecord, job: JobDefn) -> JobDefn:
    """A per-arrival job is told which arrival started it (``LWFM_TRIGGER_DATA_ID``).

    The job looks the record up on the bus (``lwfm-bus data show``, ``bus.data(id)``)
    rather than trusting a copy in its argv.  A schedule's job is told its tick
    (``LWFM_SCHEDULE_TICK``), which may be well before it runs after downtime.
    """
    tick = tick_of(trigger, record.firing_key)
    if tick is not None:
        return job.model_copy(update={"env": {**job.env, SCHEDULE_TICK_ENV: tick.isoformat()}})
    data_id = arrival_of(trigger, record.firing_key)
    if data_id is None:
        return job
    return job.model_copy(update={"env": {**job.env, TRIGGER_DATA_ENV: data_id}})


def _target(trigger: Trigger, expire: bool) -> Downstream | None:
    """The job a firing starts: the downstream, or on expiry a join's fallback (if any)."""
    if not expire:
        return trigger.downstream
    return trigger.fallback if isinstance(trigger, JoinTrigger) else None


async def settle(op: Awaitable[None]) -> None:
    """Ack, nak or term; a lost ack only means a redelivery, which the claims make harmless."""
    try:
        await op
    except (TimeoutError, nats.errors.Error) as exc:
        log.info("engine: could not settle a message: %r", exc)
