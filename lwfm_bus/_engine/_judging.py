"""Judging: which triggers one event satisfies, rules out or expires.

* A **job-status** event meets the job triggers and joins watching that job (through
  the index, so the cost does not grow with the number of triggers).  A join's
  progress is kept in the server, merged by compare-and-set, so replicas agree.
* A **data** event meets the data signatures its metadata matches.
* A **registration** judges what happened before it, as if it had happened just
  after it ("the condition already holds").
* A **deadline** closes a join's ``within`` window.
* A **tick** of a schedule (announced by :mod:`._schedules`) starts that tick's job.
* A **fired / expired / failed** event settles a claim whose replica died after
  announcing it.

What to do about it is :class:`~._firing.Firing`'s job.
"""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, datetime, timedelta

import nats.js.errors
from nats.aio.msg import Msg

from .._bus._eventbus import STREAM, EventBus
from .._events import (
    DataEvent,
    Event,
    EventDecodeError,
    JobStatusEvent,
    TriggerDeadlineEvent,
    TriggerExpiredEvent,
    TriggerFailedEvent,
    TriggerFiredEvent,
    TriggerRegisteredEvent,
    TriggerTickEvent,
    decode_event,
)
from .._retry import MAX_ATTEMPTS
from .._states import JobState
from .._subjects import ROOT
from .._triggers import DataTrigger, JobTrigger, JoinTrigger, ScheduleTrigger, WorkflowTrigger
from ._feed import TriggerFeed
from ._firing import Firing
from ._matcher import JobWatch, satisfies
from ._store import EngineStore, FiringState, JoinProgress

__all__ = ["Judge"]


class Judge:
    """Judges one event against the index and hands what must happen to :class:`Firing`."""

    def __init__(self, bus: EventBus, feed: TriggerFeed, store: EngineStore, firing: Firing) -> None:
        self._bus = bus
        self._feed = feed
        self._store = store
        self._firing = firing
        # Serialises one replica's updates of one join (replicas race through compare-and-set);
        # weak, so a lock lives only while someone holds or waits for it.
        self._join_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.look_back = True  # judge what happened before a registration (off only in benchmarks' setup)

    async def judge(self, event: Event, seq: int, redelivered: bool, msg: Msg) -> None:
        index = self._feed.index
        fire = self._firing.fire
        if isinstance(event, JobStatusEvent):
            if event.data.retry_next is not None:
                return  # not the logical job's end: its watchers wait for the next attempt (see ._retrying)
            await self._on_job(event, redelivered, msg)
        elif isinstance(event, DataEvent):
            d = event.data
            for dw in index.by_data(d.metadata, d.site, d.workflow_id):
                await fire(
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
            await self.catch_up(event, seq, redelivered, msg)
        elif isinstance(event, TriggerDeadlineEvent):
            await self._on_deadline(event, redelivered, msg)
        elif isinstance(event, TriggerTickEvent):
            reg_seq = index.reg_seq(event.data.trigger_id)
            if reg_seq is not None:  # else withdrawn: its ticks start nothing more
                await fire(
                    event.data.trigger_id, reg_seq, tick=event.data.tick, parents=(), causes=(event.id,),
                    workflow_id=event.data.workflow_id, redelivered=redelivered, msg=msg,
                )  # fmt: skip
        elif isinstance(event, TriggerFiredEvent | TriggerExpiredEvent):
            if event.data.firing_key:
                await self._store.settle_announced(event.data.firing_key, FiringState.DONE)
        elif isinstance(event, TriggerFailedEvent) and event.data.firing_key:
            await self._store.settle_announced(event.data.firing_key, FiringState.FAILED)

    # ------------------------------------------------------------------ job-status triggers and joins

    async def _on_job(self, event: JobStatusEvent, redelivered: bool, msg: Msg) -> None:
        """Meet the triggers watching this job -- for an attempt, those watching the logical job."""
        d = event.data
        index = self._feed.index
        watched = list(index.by_job(d.job_id))
        if d.logical_id != d.job_id:
            watched += index.by_job(d.logical_id)
        for watch, mask in watched:
            await self._on_upstream(watch, mask, event, redelivered, msg)
        if d.state.is_terminal:
            for watch, mask in index.by_workflow(d.workflow_id):
                await self._on_workflow_end(watch, mask, event, redelivered, msg)

    async def _on_workflow_end(
        self, watch: JobWatch, mask: int, event: JobStatusEvent, redelivered: bool, msg: Msg
    ) -> None:
        """A job of a watched workflow ended for good: fire if its end is one the trigger waits for."""
        d = event.data
        if satisfies(mask, d.state):
            await self._firing.fire(
                watch.trigger_id, watch.reg_seq, parents=(d.logical_id,), causes=(event.id,),
                workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
            )  # fmt: skip

    async def _on_upstream(
        self, watch: JobWatch, mask: int, event: JobStatusEvent, redelivered: bool, msg: Msg
    ) -> None:
        d = event.data
        job_id = d.logical_id  # an attempt stands for its logical job
        fire = self._firing.fire
        ok = satisfies(mask, d.state)
        if not ok and not d.state.is_terminal:
            return  # not there yet
        if not watch.multi:
            if ok:
                await fire(
                    watch.trigger_id, watch.reg_seq, parents=(job_id,), causes=(event.id,),
                    workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
                )  # fmt: skip
            else:
                await fire(
                    watch.trigger_id, watch.reg_seq, outcome="expire", parents=(job_id,), causes=(event.id,),
                    workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
                    reason=f"upstream job {job_id} ended {d.state.value}; the trigger can no longer fire",
                )  # fmt: skip
            return
        progress = await self._record_progress(watch, job_id, ok, d.workflow_id, event.id)
        if len(progress.satisfied) >= watch.required:
            await fire(
                watch.trigger_id, watch.reg_seq, parents=tuple(progress.satisfied),
                causes=tuple(progress.cause_event_ids), workflow_id=progress.parents_workflow,
                redelivered=redelivered, msg=msg,
            )  # fmt: skip
        elif watch.total - len(progress.ruled_out) < watch.required:
            await fire(
                watch.trigger_id, watch.reg_seq, outcome="expire", parents=tuple(progress.satisfied),
                causes=(event.id,), workflow_id=progress.parents_workflow, redelivered=redelivered, msg=msg,
                reason=(
                    f"{len(progress.ruled_out)} of {watch.total} upstream jobs ended otherwise "
                    f"(last: {job_id} {d.state.value}); {watch.required} can no longer be satisfied"
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
        trigger = await self._feed.definition(watch.trigger_id, watch.reg_seq)
        return trigger.within_s if isinstance(trigger, JoinTrigger) else None

    async def _on_deadline(self, event: TriggerDeadlineEvent, redelivered: bool, msg: Msg) -> None:
        tid = event.data.trigger_id
        index = self._feed.index
        reg_seq = index.reg_seq(tid)
        if reg_seq is None:
            return  # cancelled, or already fired or expired
        watch = index.job_watch(tid)
        progress, _ = await self._store.progress(tid)
        required = watch.required if watch is not None else 1
        if len(progress.satisfied) >= required:
            return  # it completed; the completing event fires it
        await self._firing.fire(
            tid, reg_seq, outcome="expire", parents=tuple(progress.satisfied), causes=(event.id,),
            workflow_id=progress.parents_workflow, redelivered=redelivered, msg=msg,
            reason=f"the window closed with {len(progress.satisfied)} of {required} upstream jobs satisfied",
        )  # fmt: skip

    # ------------------------------------------------------------------ "the condition already holds"

    async def catch_up(self, event: TriggerRegisteredEvent, reg_seq: int, redelivered: bool, msg: Msg) -> None:
        """Judge what happened before the registration, as if it had happened just after it."""
        trigger = event.data.definition
        index = self._feed.index
        self._feed.remember(trigger)
        if not self.look_back or trigger.trigger_id not in index:
            return  # cancelled (or finished) before we got here
        if isinstance(trigger, ScheduleTrigger):
            return  # its ticks come from the timer (see ._schedules), never from the past
        if isinstance(trigger, WorkflowTrigger):
            return  # a workflow's ends count from the registration on (a resumed run's own failures)
        if isinstance(trigger, JobTrigger | JoinTrigger):
            watch = index.job_watch(trigger.trigger_id)
            assert watch is not None
            for up in trigger.all_upstreams():
                for earlier in await self._attempts_before(up.job_id, reg_seq):
                    mask = next((m for w, m in index.by_job(up.job_id) if w is watch), 0)
                    await self._on_upstream(watch, mask, earlier, redelivered, msg)
        elif trigger.existing == "include":
            await self._data_before(trigger, reg_seq, redelivered, msg)

    async def _attempts_before(self, job_id: str, before: int) -> list[JobStatusEvent]:
        """:meth:`_states_before` of the logical job ``job_id``: of each attempt, but no retried end."""
        found: list[JobStatusEvent] = []
        current: str | None = job_id
        for _ in range(MAX_ATTEMPTS):
            if current is None:
                break
            states = await self._states_before(current, before)
            current = None
            for event in states:
                if event.data.state.is_terminal and event.data.retry_next is not None:
                    current = event.data.retry_next
                else:
                    found.append(event)
        return found

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
                reg_seq = self._feed.index.reg_seq(trigger.trigger_id)
                if reg_seq is None:
                    return
                await self._firing.fire(
                    trigger.trigger_id, reg_seq, data_id=d.data_id, parents=(d.job_id,) if d.job_id else (),
                    causes=(event.id,), workflow_id=d.workflow_id, redelivered=redelivered, msg=msg,
                )  # fmt: skip
                if trigger.fire == "once":
                    return
