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

from .._bus._connect import is_unanswered
from .._bus._eventbus import EventBus
from .._errors import LwfmBusError
from .._events import JobStatus, JobStatusEvent, TriggerExpired, TriggerFailed, TriggerFired, make_event
from .._identity import SCHEDULE_TICK_ENV, TRIGGER_DATA_ENV
from .._jobs import JobContext, JobDefn
from .._retry import MAX_RETRY_DELAY_S
from .._sites._dispatch import Dispatcher
from .._sites._report import Reporter
from .._sites._submit import cancel_requested, stored_submission
from .._states import JobState
from .._triggers import Downstream, JoinTrigger, Trigger, arrival_of, downstream_job_id, firing_key, tick_of
from ._feed import TriggerFeed
from ._settings import EngineConfig, EngineStats
from ._store import EngineStore, FiringRecord, FiringState

__all__ = ["Firing", "NotYet", "settle"]

log = logging.getLogger("lwfm_bus.engine")

# How long a dispatch the server leaves unanswered is tried again before attempts count.
_UNANSWERED_S = 60.0


class NotYet(Exception):
    """An event to judge again later: a retry whose back-off has not passed (``delay_s`` from now)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"not before {delay_s:.1f}s from now")
        self.delay_s = delay_s


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

    def speaks_for(self, site: str) -> bool:
        """Whether this bus starts ``site``'s jobs (and so their retries): see :meth:`Dispatcher.speaks_for`."""
        return self._dispatcher.speaks_for(site)

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
        claimed = await self._claim(record, redelivered)
        if claimed is None:
            return
        record, revision = claimed
        done = self._dispatching[key] = asyncio.Event()
        try:
            await self._dispatch(trigger, record, revision, msg)
        finally:
            del self._dispatching[key]
            done.set()

    async def _claim(self, record: FiringRecord, redelivered: bool) -> tuple[FiringRecord, int] | None:
        """Claim ``record``'s firing: the record to carry through and its revision, or None if not ours."""
        busy = self._dispatching.get(record.firing_key)
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
                return None
            record = stored
        return record, revision

    async def retry(self, event: JobStatusEvent, redelivered: bool, msg: Msg) -> None:
        """Start the next attempt of a job whose failed end its retry policy retries: a firing like any other.

        Claimed under the next attempt's id, whose submission the server takes once, so
        replicas, redeliveries and a crash at any point start it exactly once.  The
        next attempt runs what the failed one ran, as the server stored it, with the
        resources the policy grows after that end.  Not before its back-off has passed,
        counted from when the server stored the failed end: until then the event is
        handed back (:class:`NotYet`), holding nothing.
        """
        d = event.data
        assert d.retry_next is not None
        waited = _since_stored(msg, fallback=event.time)
        if waited < (d.retry_delay_s or 0.0):
            raise NotYet(min((d.retry_delay_s or 0.0) - waited, MAX_RETRY_DELAY_S))
        record = FiringRecord(
            firing_key=f"retry:{d.retry_next}", trigger_id=d.logical_id, outcome="fire", job_id=d.retry_next,
            workflow_id=d.workflow_id, parent_ids=d.parent_ids, cause_event_ids=(event.id,),
            claimed_by=self.config.name,
        )  # fmt: skip
        claimed = await self._claim(record, redelivered)
        if claimed is None:
            return
        record, revision = claimed
        done = self._dispatching[record.firing_key] = asyncio.Event()
        try:
            outcome = await self._next_attempt(d, msg)
            self._fault("after-submit")
            await self._store.settle(record, FiringState.DONE if outcome is None else FiringState.FAILED, revision)
            self.stats.retried += 1
        finally:
            del self._dispatching[record.firing_key]
            done.set()

    async def _next_attempt(self, d: JobStatus, msg: Msg) -> str | None:
        """Submit the attempt after ``d``'s; why not, if it could not be (it is then reported)."""
        assert d.retry_next is not None
        previous = await stored_submission(self._bus, d.site, d.job_id)
        logical = d.logical_id
        if (
            previous is not None
            and previous.ctx.attempt_marks(d.state, d.native_state, d.exit_code).get("retry_next") != d.retry_next
        ):
            previous = None  # the end says "retried", the job's own policy does not: said, never started
            log.warning("job %s: its end names a next attempt its retry policy does not give; not retried", d.job_id)
        if previous is None or previous.ctx.retry is None:
            why = f"job {d.job_id} cannot be run again: its submission is gone, or its retry policy does not retry it"
            ctx = JobContext(
                job_id=d.retry_next, site=d.site, workflow_id=d.workflow_id, name=d.name, parent_ids=d.parent_ids,
                attempt=(d.attempt or 1) + 1, attempt_of=logical,
            )  # fmt: skip
            await self._dispatcher.report_unsubmitted(ctx, why)
            return why
        before = previous.ctx
        policy = before.retry
        assert policy is not None
        ctx = before.model_copy(
            update={"job_id": d.retry_next, "native_id": None, "attempt": before.attempt + 1, "attempt_of": logical}
        )
        cancelled = await cancel_requested(self._bus, d.site, logical) or await cancel_requested(
            self._bus, d.site, d.job_id
        )
        if cancelled and await stored_submission(self._bus, d.site, ctx.job_id) is None:
            # Not started yet (a replica that died after storing it leaves the cancel to the agents,
            # which honour a cancel of the logical job).
            await Reporter(self._bus, source="engine").report(
                ctx.model_copy(update={"retry": None}), JobState.CANCELLED, native_state="cancelled",
                native_info=f"cancelled before attempt {ctx.attempt} started",
            )  # fmt: skip
            return "cancelled"
        defn = previous.defn.model_copy(update={"resources": previous.defn.resources.after(policy, d.native_state)})
        last = await self._submit(ctx, defn, msg, f"job {logical} (attempt {ctx.attempt})")
        if last is None:
            log.info("job %s: attempt %d submitted as job %s", logical, ctx.attempt, ctx.job_id)
            return None
        await self._dispatcher.report_unsubmitted(ctx, last)
        return last

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
        """Submit the firing's job (see :meth:`_submit`); reported FAILED, and the last error, if it could not be."""
        assert record.job_id is not None
        job = _with_arrival(trigger, record, target.job)
        ctx = JobContext(
            job_id=record.job_id, site=target.site, workflow_id=record.workflow_id, name=job.label(),
            parent_ids=record.parent_ids,
        )  # fmt: skip
        last = await self._submit(ctx, job, msg, f"trigger {trigger.trigger_id}")
        if last is None:
            self.stats.dispatch_latency.observe(_since_stored(msg))
            return None
        await self._dispatcher.report_unsubmitted(ctx, last)
        return last

    async def _submit(self, ctx: JobContext, job: JobDefn, msg: Msg, who: str) -> str | None:
        """Store one job's submission, retrying with backoff; the last error if every attempt failed.

        An attempt the server left unanswered (on a cluster, a leader election: seconds of
        timeouts and "unavailable") is tried again without counting, for up to a minute:
        only refusals, or a server away for longer, use up the attempts.
        """
        delay = self.config.dispatch_backoff_s
        last = "no attempt was made"
        patience = anyio.current_time() + _UNANSWERED_S
        attempt = 0
        while attempt < self.config.dispatch_attempts:
            self.stats.dispatch_calls += 1
            try:
                await self._dispatcher.submit_job(ctx, job)  # one stored submission; the site's agents run it
                return None
            except Exception as exc:  # noqa: BLE001 - every failure is retried, then reported
                last = _in_words(exc)
                if is_unanswered(exc, self._bus.nats) and anyio.current_time() < patience:
                    log.info("%s: dispatch unanswered (trying again): %s", who, last)
                    await settle(msg.in_progress())
                    await anyio.sleep(min(delay, 1.0))  # back-off while the server elects a leader
                    continue
                attempt += 1
                log.warning("%s: dispatch attempt %d failed: %s", who, attempt, last)
            if attempt < self.config.dispatch_attempts:
                await settle(msg.in_progress())
                await anyio.sleep(delay)
                delay *= 2
        return last

    async def publish(self, payload: Any, event_id: str) -> None:
        """Announce an engine event (an outcome, a deadline) under an id the server deduplicates."""
        await self._bus.publish(make_event(payload, source=f"/sites/{self._site}/engine", id=event_id))

    def _fault(self, point: str) -> None:
        if point in self.config.crash_at:
            log.warning("engine: crash point %s reached; killing this process", point)
            os.kill(os.getpid(), signal.SIGKILL)


def _since_stored(msg: Msg, fallback: datetime | None = None) -> float:
    """Seconds since the server stored the event being judged (the upstream event), by its clock.

    The stream's time, not the event's own ``time``: one clock for every event (a remote
    job's host may be skewed), and an imported event counts from its arrival here.  When
    the message does not say (``fallback``, the event's time, else 0).
    """
    try:
        stored = msg.metadata.timestamp
    except (nats.errors.NotJSMessageError, ValueError, IndexError, AttributeError):
        return time.time() - fallback.timestamp() if fallback is not None else 0.0
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
