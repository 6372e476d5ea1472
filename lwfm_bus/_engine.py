"""The trigger engine: events in, exactly-once downstream jobs out.

Each replica runs three loops:

* the **feed** -- an ordered consumer over every ``trigger`` event, keeping the
  in-memory :class:`TriggerIndex` (registrations in, cancellations and final
  firings out).  Every replica sees every trigger event.
* the **work** loop -- one durable consumer (``lwfm-engine``) shared by all replicas
  through a deliver group, over job, data, registration and deadline events.  Each
  message goes to one replica and is acked only once its effect is durable, so a
  replica killed at any instant leaves its messages to be redelivered.
* the **deadline** watcher -- a KV watch on join progress; when a ``within`` window
  closes it publishes a ``trigger.deadline`` event, which the work loop judges.

Ordering.  Before a replica judges an event at stream sequence *s*, its feed must
have applied every trigger event before *s* (:meth:`Engine._barrier`: one server
request per batch).  A registration at *r* judges the upstream events before *r*
itself (the "condition already holds" case); events after *r* meet the trigger in
the index.  So no firing is missed, whichever replica sees what first.

Exactly once.  A firing is claimed by creating its key in the ``lwfm_firings``
bucket; only one replica wins.  The downstream job id is derived from the firing
key, and dispatching is storing one submission for the target site's agents, which
the server refuses a second time for one job id; so a replica that finishes a dead
replica's claim (on redelivery) never starts a second job.  The engine never opens a
site itself: it works the same for every site, here or federated.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import signal
import socket
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from ._bus import STREAM, EventBus, deliveries
from ._engine_store import EngineStore, FiringRecord, FiringState, JoinProgress
from ._events import (
    DataEvent,
    Event,
    EventDecodeError,
    JobStatusEvent,
    TriggerCancelledEvent,
    TriggerDeadline,
    TriggerDeadlineEvent,
    TriggerExpired,
    TriggerExpiredEvent,
    TriggerFailed,
    TriggerFailedEvent,
    TriggerFired,
    TriggerFiredEvent,
    TriggerRegisteredEvent,
    decode_event,
    make_event,
)
from ._fedkeeper import keep_sources
from ._identity import TRIGGER_DATA_ENV
from ._jobs import JobContext, JobDefn
from ._matcher import JobWatch, TriggerIndex, satisfies
from ._sites._dispatch import Dispatcher
from ._states import JobState
from ._subjects import ROOT
from ._triggers import (
    DataTrigger,
    Downstream,
    JobTrigger,
    JoinTrigger,
    Trigger,
    arrival_of,
    downstream_job_id,
    firing_key,
)


@runtime_checkable
class Dispatching(Protocol):
    """A bus that can hand jobs to their sites' agents (``lwfm_bus.connect()`` gives one)."""

    dispatcher: Dispatcher


__all__ = ["Engine", "EngineConfig", "EngineStats", "serve_engine"]

log = logging.getLogger("lwfm_bus.engine")

DURABLE = "lwfm-engine"
# The work consumer takes the whole stream through one filter and acks what is not work
# unread: nats-server delivers to a consumer with several filter subjects, on a stream
# where every event has its own subject, about 25 times more slowly (measured in
# bench/ingest.py; nats-server issues 4888 and 5040).
_WORK_FILTER = f"{ROOT}.>"
_WORK_KINDS = frozenset({"job", "data"})
# Outcomes come back to settle a claim whose replica died after announcing it.
_WORK_TRIGGER_DETAILS = frozenset({"registered", "deadline", "fired", "expired", "failed"})


def _with_arrival(trigger: Trigger, record: FiringRecord, job: JobDefn) -> JobDefn:
    """A per-arrival job is told which arrival started it (``LWFM_TRIGGER_DATA_ID``).

    The job looks the record up on the bus (``lwfm-bus data show``, ``bus.data(id)``)
    rather than trusting a copy in its argv.
    """
    data_id = arrival_of(trigger, record.firing_key)
    if data_id is None:
        return job
    return job.model_copy(update={"env": {**job.env, TRIGGER_DATA_ENV: data_id}})


def _is_work(subject: str, trigger_site: str = "*") -> bool:
    """Job and data events, and the trigger events the engine acts on (by subject alone).

    In a federation an engine owns only the triggers registered at its own site
    (``trigger_site``): the others' arrive here by sourcing, to be judged at home.
    """
    parts = subject.split(".")
    if len(parts) < 3:
        return False
    if parts[2] in _WORK_KINDS:
        return True
    return parts[2] == "trigger" and parts[-1] in _WORK_TRIGGER_DETAILS and trigger_site in ("*", parts[1])


class EngineConfig(BaseModel):
    """How an engine replica behaves; the defaults suit a laptop and a cluster alike."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="This replica, in claims."
    )
    max_inflight: PositiveInt = Field(default=256, description="Events judged at once by this replica.")
    ack_wait_s: PositiveFloat = Field(
        default=10.0,
        description="Unacked events are redelivered after this; also how soon a dead replica's work resumes.",
    )
    dispatch_attempts: PositiveInt = Field(default=4, description="Submits tried before a firing fails for good.")
    dispatch_backoff_s: PositiveFloat = Field(default=0.5, description="First retry delay; it doubles.")
    definition_cache: PositiveInt = Field(default=10_000, description="Trigger definitions kept in memory.")
    crash_at: frozenset[str] = Field(
        default=frozenset(),
        description="Test hook: SIGKILL this process at these points (after-claim, after-submit, after-fired).",
    )


@dataclass
class EngineStats:
    """Counters for people and benchmarks; correctness never depends on them."""

    events: int = 0
    fired: int = 0
    expired: int = 0
    failed: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    dispatch_calls: int = 0
    triggers_indexed: int = 0
    errors: int = 0


class Engine:
    """One replica.  Run it with :func:`serve_engine` (or ``await tg.start(engine.run)``)."""

    def __init__(self, bus: EventBus, config: EngineConfig | None = None) -> None:
        if not isinstance(bus, Dispatching):
            raise TypeError("an engine needs a bus that dispatches jobs: one from lwfm_bus.connect()")
        self._bus = bus
        self._dispatcher = bus.dispatcher  # a firing is one stored submission for the target site
        # Whose triggers this engine judges: everyone's, or in a federation its own site's.
        self._trigger_site = bus.config.site if bus.federation is not None else "*"
        self._trigger_events = f"{ROOT}.{self._trigger_site}.trigger.>"
        self.config = config or EngineConfig()
        self.index = TriggerIndex()
        self.stats = EngineStats()
        self._store = EngineStore(bus.jetstream)
        self._defs: OrderedDict[str, Trigger] = OrderedDict()
        self._feed_seq = 0
        self._feed_moved = asyncio.Condition()
        self._clean_upto = 0
        self._highest_work_seq = 0
        self._barrier_lock = asyncio.Lock()
        # Serialises one replica's updates of one join (replicas race through compare-and-set);
        # weak, so a lock lives only while someone holds or waits for it.
        self._join_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._deadlines: list[tuple[datetime, str, str]] = []
        self._deadline_changed = asyncio.Event()
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self._dispatch_hooks: list[Callable[[str], Awaitable[None]]] = []
        # Firings this replica is dispatching now: a redelivery of their event (it outlived
        # the ack wait) must not take over a claim that is not dead, only busy.
        self._dispatching: dict[str, asyncio.Event] = {}

    @property
    def _site(self) -> str:
        return self._bus.config.site

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, rebuild the index, then judge events until cancelled."""
        await self._store.open()
        async with anyio.create_task_group() as tg:
            if self._bus.federation is not None:
                tg.start_soon(keep_sources, self._bus)
            target = await self._last_trigger_seq()
            tg.start_soon(self._feed_loop)
            await self._feed_reached(target)
            log.info("engine %s: %d triggers indexed (feed at %d)", self.config.name, len(self.index), target)
            await tg.start(self._deadline_loop)
            await tg.start(self._work_loop)
            task_status.started()

    # ------------------------------------------------------------------ the feed

    async def _last_trigger_seq(self) -> int:
        try:
            msg = await self._bus.jetstream.get_msg(STREAM, subject=self._trigger_events)
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def _feed_loop(self) -> None:
        js = self._bus.jetstream
        sub = await js.subscribe(
            self._trigger_events,
            stream=STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                seq = msg.metadata.sequence.stream
                try:
                    event = decode_event(msg.data, self._bus.config.max_event_bytes, msg.subject)
                except EventDecodeError as err:
                    await self._bus.dead_letter(msg, err)
                    event = None
                if event is not None:
                    self._apply_trigger_event(event, seq)
                async with self._feed_moved:
                    self._feed_seq = seq
                    self._feed_moved.notify_all()
        finally:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await sub.unsubscribe()

    def _apply_trigger_event(self, event: Event, seq: int) -> None:
        if isinstance(event, TriggerRegisteredEvent):
            self.index.add(event.data.definition, seq)
            self._remember(event.data.definition)
        elif isinstance(event, TriggerCancelledEvent):
            self.index.remove(event.data.trigger_id)
        elif isinstance(event, TriggerFiredEvent | TriggerExpiredEvent | TriggerFailedEvent):
            trigger = self._defs.get(event.data.trigger_id)
            once = trigger.fires_once() if trigger is not None else not self.index.is_per_arrival(event.data.trigger_id)
            if once:
                self.index.remove(event.data.trigger_id)
        self.stats.triggers_indexed = len(self.index)

    async def _feed_reached(self, seq: int) -> None:
        async with self._feed_moved:
            await self._feed_moved.wait_for(lambda: self._feed_seq >= seq)

    async def _barrier(self, seq: int) -> None:
        """Return once the feed has applied every trigger event up to ``seq``.

        One request answers for every message received so far: "is there a trigger
        event after the feed's position and at or before the newest work message?"
        """
        while seq > self._clean_upto:
            async with self._barrier_lock:
                if seq <= self._clean_upto:
                    return
                target = max(seq, self._highest_work_seq)
                position = self._feed_seq
                try:
                    nxt = await self._bus.jetstream.get_msg(
                        STREAM, seq=position + 1, subject=self._trigger_events, next=True
                    )
                    pending = int(nxt.seq or 0)
                except nats.js.errors.NotFoundError:
                    pending = 0
                if pending == 0 or pending > target:
                    self._clean_upto = max(self._clean_upto, target)
                    return
                await self._feed_reached(pending)

    def _remember(self, trigger: Trigger) -> None:
        self._defs[trigger.trigger_id] = trigger
        self._defs.move_to_end(trigger.trigger_id)
        while len(self._defs) > self.config.definition_cache:
            self._defs.popitem(last=False)

    async def _definition(self, trigger_id: str, reg_seq: int) -> Trigger:
        found = self._defs.get(trigger_id)
        if found is not None:
            return found
        raw = await self._bus.jetstream.get_msg(STREAM, seq=reg_seq)
        event = decode_event(raw.data or b"", self._bus.config.max_event_bytes, raw.subject)
        if not isinstance(event, TriggerRegisteredEvent) or event.data.trigger_id != trigger_id:
            raise RuntimeError(f"stream sequence {reg_seq} is not the registration of trigger {trigger_id}")
        self._remember(event.data.definition)
        return event.data.definition

    # ------------------------------------------------------------------ the work loop

    async def _ensure_consumer(self) -> str:
        deliver = f"{DURABLE}.{STREAM}.deliver"
        cfg = ConsumerConfig(
            durable_name=DURABLE,
            deliver_subject=deliver,
            deliver_group=DURABLE,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.config.ack_wait_s,
            max_ack_pending=max(1024, self.config.max_inflight * 4),
            filter_subject=_WORK_FILTER,
        )
        try:
            # Create, or bring an existing consumer's settings (filters, ack wait) up to date.
            await self._bus.jetstream.add_consumer(STREAM, cfg)
        except nats.js.errors.APIError as exc:  # 400, or 500 for "cannot be updated" (e.g. deliver policy)
            info = await self._bus.jetstream.consumer_info(STREAM, DURABLE)
            log.warning("engine: keeping the existing consumer %s as it is: %s", DURABLE, exc)
            return str(info.config.deliver_subject or deliver)
        return deliver

    async def _work_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        deliver = await self._ensure_consumer()
        sub = await self._bus.nats.subscribe(deliver, queue=DURABLE, pending_msgs_limit=0, pending_bytes_limit=0)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                async for msg in sub.messages:
                    seq = _stream_seq(msg)
                    if seq > self._highest_work_seq:
                        self._highest_work_seq = seq
                    if not _is_work(msg.subject, self._trigger_site):
                        await _settle(msg.ack())
                        continue
                    await self._slots.acquire()
                    tg.start_soon(self._handle, msg, seq)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg, seq: int) -> None:
        try:
            self.stats.events += 1
            try:
                event = decode_event(msg.data, self._bus.config.max_event_bytes, msg.subject)
            except EventDecodeError as err:
                self.stats.dead_lettered += 1
                await self._bus.dead_letter(msg, err)
                await _settle(msg.term())
                return
            redelivered = deliveries(msg) > 1
            keepalive = _KeepAlive(msg, self.config.ack_wait_s / 3)
            try:
                await self._barrier(seq)
                await self._judge(event, seq, redelivered, msg)
            except Exception as exc:
                self.stats.errors += 1
                log.warning("engine: event %s (seq %d) will be retried: %r", event.id, seq, exc, exc_info=True)
                await _settle(msg.nak(delay=min(30.0, 0.5 * deliveries(msg))))
                return
            finally:
                keepalive.cancel()
            await _settle(msg.ack())
        finally:
            self._slots.release()

    async def _judge(self, event: Event, seq: int, redelivered: bool, msg: Msg) -> None:
        if isinstance(event, JobStatusEvent):
            for watch, mask in list(self.index.by_job(event.data.job_id)):
                await self._on_upstream(watch, mask, event, redelivered, msg)
        elif isinstance(event, DataEvent):
            d = event.data
            for dw in self.index.by_data(d.metadata, d.site, d.workflow_id):
                await self._fire(
                    dw.trigger_id,
                    dw.reg_seq,
                    data_id=d.data_id,
                    parents=(d.job_id,) if d.job_id else (),
                    causes=(event.id,),
                    workflow_id=d.workflow_id,
                    redelivered=redelivered,
                    msg=msg,
                )
        elif isinstance(event, TriggerRegisteredEvent):
            await self._catch_up(event, seq, redelivered, msg)
        elif isinstance(event, TriggerDeadlineEvent):
            await self._on_deadline(event, redelivered, msg)
        elif isinstance(event, TriggerFiredEvent | TriggerExpiredEvent):
            if event.data.firing_key:
                await self._store.settle_announced(event.data.firing_key, FiringState.DONE)
        elif isinstance(event, TriggerFailedEvent) and event.data.firing_key:
            await self._store.settle_announced(event.data.firing_key, FiringState.FAILED)

    # ------------------------------------------------------------------ job-status triggers and joins

    async def _on_upstream(
        self, watch: JobWatch, mask: int, event: JobStatusEvent, redelivered: bool, msg: Msg
    ) -> None:
        d = event.data
        ok = satisfies(mask, d.state)
        if not ok and not d.state.is_terminal:
            return  # not there yet
        if not watch.multi:
            if ok:
                await self._fire(
                    watch.trigger_id, watch.reg_seq, parents=(d.job_id,), causes=(event.id,),
                    workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
                )  # fmt: skip
            else:
                await self._fire(
                    watch.trigger_id, watch.reg_seq, outcome="expire", parents=(d.job_id,), causes=(event.id,),
                    workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
                    reason=f"upstream job {d.job_id} ended {d.state.value}; the trigger can no longer fire",
                )  # fmt: skip
            return
        progress = await self._record_progress(watch, d.job_id, ok, d.workflow_id, event.id)
        if len(progress.satisfied) >= watch.required:
            await self._fire(
                watch.trigger_id, watch.reg_seq, parents=tuple(progress.satisfied),
                causes=tuple(progress.cause_event_ids), workflow_id=progress.parents_workflow,
                redelivered=redelivered, msg=msg,
            )  # fmt: skip
        elif watch.total - len(progress.ruled_out) < watch.required:
            await self._fire(
                watch.trigger_id, watch.reg_seq, outcome="expire", parents=tuple(progress.satisfied),
                causes=(event.id,), workflow_id=progress.parents_workflow, redelivered=redelivered, msg=msg,
                reason=(
                    f"{len(progress.ruled_out)} of {watch.total} upstream jobs ended otherwise "
                    f"(last: {d.job_id} {d.state.value}); {watch.required} can no longer be satisfied"
                ),
            )  # fmt: skip

    async def _record_progress(
        self, watch: JobWatch, job_id: str, ok: bool, workflow_id: str | None, cause: str
    ) -> JoinProgress:
        """Add one upstream to the join's record in the server (compare-and-set, merged on conflict)."""
        lock = self._join_locks.get(watch.trigger_id)
        if lock is None:
            lock = self._join_locks[watch.trigger_id] = asyncio.Lock()
        async with lock:
            while True:
                progress, revision = await self._store.progress(watch.trigger_id)
                column = progress.satisfied if ok else progress.ruled_out
                if job_id in column:
                    return progress  # a redelivery, or a replayed event: nothing new
                column.append(job_id)
                if ok:
                    progress.cause_event_ids.append(cause)
                    if progress.parents_workflow is None:
                        progress.parents_workflow = workflow_id
                    if progress.first_at is None:
                        progress.first_at = datetime.now(UTC)
                        within = await self._within(watch)
                        if within is not None:
                            progress.deadline = progress.first_at + timedelta(seconds=within)
                if await self._store.save_progress(progress, revision) is not None:
                    return progress

    async def _within(self, watch: JobWatch) -> float | None:
        trigger = await self._definition(watch.trigger_id, watch.reg_seq)
        return trigger.within_s if isinstance(trigger, JoinTrigger) else None

    async def _on_deadline(self, event: TriggerDeadlineEvent, redelivered: bool, msg: Msg) -> None:
        tid = event.data.trigger_id
        reg_seq = self.index.reg_seq(tid)
        if reg_seq is None:
            return  # cancelled, or already fired or expired
        watch = self.index.job_watch(tid)
        progress, _ = await self._store.progress(tid)
        required = watch.required if watch is not None else 1
        if len(progress.satisfied) >= required:
            return  # it completed; the completing event fires it
        await self._fire(
            tid, reg_seq, outcome="expire", parents=tuple(progress.satisfied), causes=(event.id,),
            workflow_id=progress.parents_workflow, redelivered=redelivered, msg=msg,
            reason=f"the window closed with {len(progress.satisfied)} of {required} upstream jobs satisfied",
        )  # fmt: skip

    # ------------------------------------------------------------------ "the condition already holds"

    async def _catch_up(self, event: TriggerRegisteredEvent, reg_seq: int, redelivered: bool, msg: Msg) -> None:
        """Judge what happened before the registration, as if it had happened just after it."""
        trigger = event.data.definition
        self._remember(trigger)
        if trigger.trigger_id not in self.index:
            return  # cancelled (or finished) before we got here
        if isinstance(trigger, JobTrigger | JoinTrigger):
            watch = self.index.job_watch(trigger.trigger_id)
            assert watch is not None
            for up in trigger.all_upstreams():
                for earlier in await self._states_before(up.job_id, reg_seq):
                    mask = next((m for w, m in self.index.by_job(up.job_id) if w is watch), 0)
                    await self._on_upstream(watch, mask, earlier, redelivered, msg)
        elif trigger.existing == "include":
            await self._data_before(trigger, reg_seq, redelivered, msg)

    async def _states_before(self, job_id: str, before: int) -> list[JobStatusEvent]:
        """The first event of each state the job reached before stream sequence ``before``."""
        js = self._bus.jetstream

        async def first(state: JobState) -> JobStatusEvent | None:
            try:
                raw = await js.get_msg(STREAM, seq=1, subject=f"{ROOT}.*.job.*.{job_id}.{state.value}", next=True)
            except nats.js.errors.NotFoundError:
                return None
            if int(raw.seq or 0) >= before:
                return None
            try:
                event = decode_event(raw.data or b"", self._bus.config.max_event_bytes, raw.subject)
            except EventDecodeError:
                return None
            return event if isinstance(event, JobStatusEvent) else None

        found = await asyncio.gather(*(first(s) for s in JobState if s is not JobState.INFO))
        return [e for e in found if e is not None]

    async def _data_before(self, trigger: DataTrigger, before: int, redelivered: bool, msg: Msg) -> None:
        if before <= 1:
            return
        subject = f"{ROOT}.{trigger.source_site or '*'}.data.{trigger.source_workflow or '*'}.>"
        async with self._bus.replay(subject) as history:
            async for event in history:
                if history.last_seq >= before:
                    break
                if not isinstance(event, DataEvent):
                    continue
                d = event.data
                if not trigger.matches(d.metadata, d.site, d.workflow_id):
                    continue
                reg_seq = self.index.reg_seq(trigger.trigger_id)
                if reg_seq is None:
                    return
                await self._fire(
                    trigger.trigger_id, reg_seq, data_id=d.data_id, parents=(d.job_id,) if d.job_id else (),
                    causes=(event.id,), workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
                )  # fmt: skip
                if trigger.fire == "once":
                    return

    # ------------------------------------------------------------------ firing

    async def _fire(
        self,
        trigger_id: str,
        reg_seq: int,
        *,
        outcome: str = "fire",
        data_id: str | None = None,
        parents: tuple[str, ...],
        causes: tuple[str, ...],
        workflow_id: str | None,
        redelivered: bool,
        msg: Msg,
        reason: str | None = None,
    ) -> None:
        trigger = await self._definition(trigger_id, reg_seq)
        key = firing_key(trigger, data_id)
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
                await self._publish(
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
            await self._publish(
                TriggerExpired(
                    trigger_id=trigger.trigger_id, site=self._site, workflow_id=trigger.workflow_id,
                    reason=(record.reason or "expired")[:4000], fallback_job_id=record.job_id if target else None,
                    firing_key=record.firing_key,
                ),
                f"expired:{record.firing_key}",
            )  # fmt: skip
            self.stats.expired += 1
        else:
            await self._publish(
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
                for hook in self._dispatch_hooks:
                    await hook(record.job_id)
                job = _with_arrival(trigger, record, target.job)
                ctx = JobContext(
                    job_id=record.job_id, site=target.site, workflow_id=record.workflow_id, name=job.label(),
                    parent_ids=record.parent_ids,
                )  # fmt: skip
                await self._dispatcher.submit_job(ctx, job)  # one stored submission; the site's agents run it
                return None
            except Exception as exc:  # noqa: BLE001 - every failure is retried, then reported
                last = f"{type(exc).__name__}: {exc}"
                log.warning("trigger %s: dispatch attempt %d failed: %s", trigger.trigger_id, attempt, last)
            if attempt < self.config.dispatch_attempts:
                await _settle(msg.in_progress())
                await anyio.sleep(delay)
                delay *= 2
        ctx = JobContext(
            job_id=record.job_id, site=target.site, workflow_id=record.workflow_id, name=target.job.label(),
            parent_ids=record.parent_ids,
        )  # fmt: skip
        await self._dispatcher.report_unsubmitted(ctx, last)
        return last

    async def _publish(self, payload: Any, event_id: str) -> None:
        await self._bus.publish(make_event(payload, source=f"/sites/{self._site}/engine", id=event_id))

    def _fault(self, point: str) -> None:
        if point in self.config.crash_at:
            log.warning("engine: crash point %s reached; killing this process", point)
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ deadlines

    async def _deadline_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch join progress for ``within`` windows; announce each one that closes."""
        kv = self._store.joins
        assert kv is not None
        watcher = await kv.watchall()
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._deadline_timer)
            try:
                async for entry in watcher:
                    if entry is None or entry.value is None:
                        continue
                    try:
                        progress = JoinProgress.model_validate_json(entry.value)
                    except ValueError:
                        continue
                    if progress.deadline is not None:
                        heapq.heappush(self._deadlines, (progress.deadline, progress.trigger_id, entry.key))
                        self._deadline_changed.set()
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _deadline_timer(self) -> None:
        announced: set[str] = set()
        while True:
            self._deadline_changed.clear()
            if not self._deadlines:
                await self._deadline_changed.wait()
                continue
            when, trigger_id, _ = self._deadlines[0]
            wait = (when - datetime.now(UTC)).total_seconds()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._deadline_changed.wait()
                continue
            heapq.heappop(self._deadlines)
            if trigger_id in announced or trigger_id not in self.index:
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
                heapq.heappush(self._deadlines, (when + timedelta(seconds=1), trigger_id, ""))


class _KeepAlive:
    """Tells the server, every ``interval`` seconds, that an event is still being judged.

    One event can start thousands of triggers (a fan-out root); without this, its
    judging outlives the ack wait and the server redelivers it meanwhile.  A timer, not
    a task: nothing is spent on the many events judged within the interval.
    """

    def __init__(self, msg: Msg, interval: float) -> None:
        self._msg = msg
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._beats: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._beat)

    def _beat(self) -> None:
        task = self._loop.create_task(_settle(self._msg.in_progress()))
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)
        self._timer = self._loop.call_later(self._interval, self._beat)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _target(trigger: Trigger, expire: bool) -> Downstream | None:
    """The job a firing starts: the downstream, or on expiry a join's fallback (if any)."""
    if not expire:
        return trigger.downstream
    return trigger.fallback if isinstance(trigger, JoinTrigger) else None


def _stream_seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except (nats.errors.NotJSMessageError, ValueError, IndexError, AttributeError):
        return 0


async def _settle(op: Awaitable[None]) -> None:
    """Ack, nak or term; a lost ack only means a redelivery, which the claims make harmless."""
    try:
        await op
    except (TimeoutError, nats.errors.Error) as exc:
        log.info("engine: could not settle a message: %r", exc)


@contextlib.asynccontextmanager
async def serve_engine(bus: EventBus, config: EngineConfig | None = None) -> AsyncIterator[Engine]:
    """Run an engine replica on ``bus`` until the block exits; entered once it is ready."""
    engine = Engine(bus, config)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        try:
            yield engine
        finally:
            tg.cancel_scope.cancel()
