"""Lifecycle reports that are never lost: fixed ids, retried until the server acknowledges.

A job's lifecycle event has a deterministic id (``<job>:<STATE>``), so everyone who
observes one transition -- the agent that launched the job, an agent that adopted
it, the job's own orphan reporter -- publishes the same event, and the server's
duplicate window keeps one copy.  That makes retrying safe: a report whose
acknowledgement was lost is simply sent again.

A report is retried until it is acknowledged, through server stalls, restarts and
partitions.  Only a stop ends the retries (an agent shutting down), and then the
job's end is not forgotten: the adapter keeps the job marked unfinished until its
terminal report was acknowledged, so whoever adopts the job reports it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from .._bus._connect import OUTAGE
from .._bus._eventbus import EventBus
from .._errors import BusClosedError, PublishError
from .._events import Event, JobStatus, make_event
from .._jobs import JobContext
from .._states import JobState

__all__ = ["Reporter", "lifecycle_id", "publish_until_acked"]

log = logging.getLogger("lwfm_bus.report")

_LIFECYCLE = frozenset(s for s in JobState if s is not JobState.INFO)
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 2.0


def lifecycle_id(job_id: str, state: JobState, variant: str | None = None) -> str | None:
    """The fixed event id of a job's state (None for INFO, which can happen many times).

    ``variant`` names a second fact about one state, such as the submitter's
    "no agent" PENDING before the agent's own PENDING.
    """
    if state not in _LIFECYCLE:
        return None
    return f"{job_id}:{state.value}" + (f":{variant}" if variant else "")


async def publish_until_acked(
    bus: EventBus,
    event: Event,
    *,
    deadline_s: float | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Publish ``event`` again and again until the server stores it (or says it has it).

    ``deadline_s`` bounds the attempts (then the last :class:`PublishError` is raised);
    without it only ``stopping()`` -- checked before every attempt, because on Python
    3.11 a cancellation that races a finished publish can be lost inside nats-py --
    or a closed connection end the loop.
    """
    delay = _FIRST_DELAY_S
    warned = False
    with anyio.CancelScope() as scope:
        if deadline_s is not None:
            scope.deadline = anyio.current_time() + deadline_s
        while not stopping():
            try:
                await bus.publish(event)
                if warned:
                    log.warning("event %s reached the server after all", event.id, extra=OUTAGE)
                return
            except BusClosedError:
                raise
            except PublishError as exc:
                if not warned:
                    log.warning("event %s not acknowledged (retrying until it is): %s", event.id, exc, extra=OUTAGE)
                    warned = True
                await anyio.sleep(delay)  # back-off between attempts, not synchronisation
                delay = min(_MAX_DELAY_S, delay * 2)
    if stopping():
        raise BusClosedError(f"stopped before event {event.id} was acknowledged")
    raise PublishError(f"event {event.id} was not acknowledged within {deadline_s}s")


class Reporter:
    """Publishes what adapters observe as canonical job events (a :class:`StatusReporter`).

    ``on_reported`` is told of every report the server acknowledged -- an agent uses it
    to learn that a job it holds has ended.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        source: str = "adapter",
        deadline_s: float | None = None,
        stopping: Callable[[], bool] = lambda: False,
        on_reported: Callable[[JobContext, JobState], None] | None = None,
    ) -> None:
        self._bus = bus
        self._source = source
        self._deadline_s = deadline_s
        self._stopping = stopping
        self._on_reported = on_reported

    async def report(
        self,
        ctx: JobContext,
        state: JobState,
        *,
        native_state: str | None = None,
        native_info: str | None = None,
        exit_code: int | None = None,
        info: str | None = None,
        variant: str | None = None,
    ) -> None:
        payload = JobStatus(
            job_id=ctx.job_id,
            site=ctx.site,
            state=state,
            workflow_id=ctx.workflow_id,
            name=ctx.name,
            native_id=ctx.native_id,
            native_state=native_state,
            native_info=native_info,
            exit_code=exit_code,
            info=info,
            parent_ids=ctx.parent_ids,
            **ctx.attempt_marks(state, native_state, exit_code),
        )
        envelope: dict[str, Any] = {}
        fixed = lifecycle_id(ctx.job_id, state, variant)
        if fixed is not None:
            envelope["id"] = fixed
        # Made once: every retry sends the same id, so the server can drop the duplicates.
        event = make_event(payload, source=f"/sites/{ctx.site}/{self._source}", **envelope)
        await publish_until_acked(self._bus, event, deadline_s=self._deadline_s, stopping=self._stopping)
        if self._on_reported is not None:
            self._on_reported(ctx, state)
