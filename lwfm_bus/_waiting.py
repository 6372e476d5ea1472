"""Waiting for a job's end: three ways to hear it, and a watch for a job that can never start.

Hearing the end must not depend on one mechanism: a plain subscription opened first (the
end as it is published here), the store read by subject (an end already stored), and the
job's JetStream consumer (an end reported elsewhere, arriving through the stream) race,
and the first to hear it decides.  Beside them, a job that a trigger was to start may
never run: :func:`never_runs` reads the index once and then follows the triggers'
outcomes, and ends the wait with the trigger that ended and why.

The race runs in an anyio task group, not in asyncio tasks cancelled once: on Python
3.11 nats-py awaits its replies inside ``asyncio.wait_for``, which loses a cancellation
that lands as the reply arrives, and a loser cancelled once then waited for ever -- and
so did ``wait()``, after the job had ended.  anyio cancels again at every await.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import nats.errors
import nats.js.errors

from ._bus._eventbus import STREAM, EventBus
from ._errors import JobTimeoutError, JobWillNotRunError, UnknownJobError
from ._events import EventDecodeError, JobStatus, JobStatusEvent, TriggerRegistered, decode_event
from ._index._projection import JobIndex
from ._retry import MAX_ATTEMPTS
from ._states import JobState
from ._subjects import ROOT, check_token
from ._triggers import JoinTrigger, Trigger

__all__ = ["never_runs", "stored_end", "wait_for_end"]

log = logging.getLogger("lwfm_bus.client")


async def wait_for_end(
    bus: EventBus, job_id: str, timeout: float | None, doomed: Callable[[], Awaitable[None]]
) -> JobStatus:
    """The job's terminal status, woken by its event (it may have ended already).

    ``doomed`` raises :class:`JobWillNotRunError` when the job can no longer start (see
    :func:`never_runs`); it races the three ways of hearing the end.  An end that the
    job's retry policy runs again is not the job's: the wait goes on with the next
    attempt, and returns the final attempt's end.
    """
    with anyio.move_on_after(timeout):
        status = await _end_of(bus, job_id, doomed)
        for _ in range(MAX_ATTEMPTS):
            if status.retry_next is None:
                return status
            status = await _end_of(bus, status.retry_next, anyio.sleep_forever)
        return status
    raise JobTimeoutError(f"job {job_id} did not finish within {timeout}s")


async def _end_of(bus: EventBus, job_id: str, doomed: Callable[[], Awaitable[None]]) -> JobStatus:
    """One job id's terminal status (an attempt's, retried or not)."""
    subject = f"{ROOT}.*.job.*.{check_token(job_id, 'job id')}.*"

    async def terminal() -> JobStatus:
        async with bus.subscribe(subject, from_start=True) as events:
            async for event in events:
                if isinstance(event, JobStatusEvent) and event.data.state.is_terminal:
                    return event.data
        raise UnknownJobError(job_id)  # pragma: no cover - a followed subscription does not end

    async def live(sub: Any) -> JobStatus:
        # The same events as they are published here, on a plain subscription: a second
        # way to hear the end, should the JetStream consumer below miss it (seen, rarely,
        # under load).  A job's end reported on another site arrives through the stream.
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                try:
                    event = decode_event(msg.data, bus.config.max_event_bytes, msg.subject)
                except EventDecodeError:
                    continue  # parked by the readers of the stream
                if isinstance(event, JobStatusEvent) and event.data.state.is_terminal:
                    return event.data
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def stored() -> JobStatus:
        # An end already stored, read by subject (no consumer): with ``live`` subscribed
        # first, an end is either here or heard there.
        end = await stored_end(bus, job_id)
        if end is not None:
            return end
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def ended() -> JobStatus:
        # Subscribed before the store is read (one connection keeps the order): an end is
        # either stored by then, or heard.  The first of the four to finish decides.
        #
        # The race runs in an anyio task group, not in asyncio tasks cancelled once:
        # on Python 3.11, a task cancelled while nats-py awaits a reply inside
        # ``asyncio.wait_for`` can lose the cancellation (the reply had arrived), and
        # a loser cancelled once would then wait for ever -- and so would this call,
        # after the job had ended.  anyio cancels again at every await until the
        # loser has left.
        sub = await bus.nats.subscribe(subject)
        outcome: list[JobStatus | Exception] = []
        async with anyio.create_task_group() as tg:

            async def first(racer: Callable[[], Awaitable[JobStatus | None]]) -> None:
                result: JobStatus | Exception | None
                try:
                    result = await racer()
                except Exception as exc:  # noqa: BLE001 - JobWillNotRunError, or a lost connection: raised below, unwrapped
                    result = exc
                if result is not None:
                    outcome.append(result)
                    tg.cancel_scope.cancel()

            tg.start_soon(first, functools.partial(live, sub))
            tg.start_soon(first, stored)
            tg.start_soon(first, terminal)
            tg.start_soon(first, doomed)
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    return await ended()


async def stored_end(bus: EventBus, job_id: str) -> JobStatus | None:
    """The end of ``job_id`` as the stream holds it, read by subject (no consumer); None if it holds
    none, or cannot be read now (the caller has other ways to hear it, or says nothing)."""
    for state in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED):
        try:
            raw = await bus.jetstream.get_msg(
                STREAM, seq=1, subject=f"{ROOT}.*.job.*.{job_id}.{state.value}", next=True
            )
        except nats.js.errors.NotFoundError:
            continue
        except nats.errors.Error as exc:
            log.debug("job %s: the stored end could not be read: %r", job_id, exc)
            return None
        with contextlib.suppress(EventDecodeError):
            event = decode_event(raw.data or b"", bus.config.max_event_bytes, raw.subject)
            if isinstance(event, JobStatusEvent):
                return event.data
    return None


async def never_runs(bus: EventBus, index_of: Callable[[], Awaitable[JobIndex]], job_id: str) -> None:
    """Raise :class:`JobWillNotRunError` once every trigger that could start ``job_id`` has ended otherwise.

    Returns never otherwise.  The index is read once (after subscribing, so nothing
    is missed between the two); from then on the outcomes heard on a plain
    subscription are applied here, so many waiters cost no index work per event.
    """
    outcomes = await bus.nats.subscribe(f"{ROOT}.*.trigger.>")
    try:
        index = await index_of()
        if await index.job(job_id) is not None:
            await anyio.sleep_forever()  # it exists: its own end will come
        starters = {
            t.trigger_id: _Starter(t.definition, t.state, t.reason) for t in await index.triggers_starting(job_id)
        }
        last = ""
        while True:
            if starters and all(_cannot_start(s, job_id) for s in starters.values()):
                tid = last or next(iter(starters))
                raise JobWillNotRunError(job_id, tid, starters[tid].state, starters[tid].reason)
            msg = await outcomes.next_msg(timeout=None)
            parts = msg.subject.split(".")  # lwfm.<site>.trigger.<workflow>.<trigger>.<what>
            if len(parts) != 6 or (parts[4] not in starters and parts[5] != "registered"):
                continue
            try:
                event = decode_event(msg.data, bus.config.max_event_bytes, msg.subject)
            except EventDecodeError:
                continue
            data = event.data
            if isinstance(data, TriggerRegistered):
                if _starts(data.definition, job_id):
                    starters[data.trigger_id] = _Starter(data.definition, "active", None)
                continue
            if parts[5] in _OUTCOMES:
                reason = getattr(data, "reason", None)
                starters[parts[4]] = _Starter(starters[parts[4]].definition, parts[5], reason)
                last = parts[4]
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
            await outcomes.unsubscribe()


@dataclass(frozen=True)
class _Starter:
    """A trigger that could start an awaited job, as far as the waiter knows."""

    definition: Trigger
    state: str
    reason: str | None


_OUTCOMES = frozenset({"fired", "expired", "failed", "cancelled"})  # the index's trigger states, as subject tokens


def _is_fallback(trigger: Trigger, job_id: str) -> bool:
    fallback = trigger.fallback if isinstance(trigger, JoinTrigger) else None
    return fallback is not None and fallback.job_id == job_id


def _starts(trigger: Trigger, job_id: str) -> bool:
    return trigger.downstream.job_id == job_id or _is_fallback(trigger, job_id)


def _cannot_start(t: _Starter, job_id: str) -> bool:
    """Whether trigger ``t`` has ended without (and can no longer) start the job ``job_id``."""
    if t.state in ("failed", "cancelled"):
        return True
    if t.state == "expired":
        return not _is_fallback(t.definition, job_id)  # an expiry starts the fallback, and only it
    if t.state == "fired":
        return _is_fallback(t.definition, job_id)  # a firing starts the downstream, never the fallback
    return False  # active
