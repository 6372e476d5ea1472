"""Retries on a consumer of their own: the failed ends that a retry policy runs again.

A retried end waits out its back-off as a delayed negative acknowledgement: the server
hands it back when the next attempt is due, and nothing waits in memory.  But until
then it counts against its consumer's ``max_ack_pending``; on the work consumer a
thousand failed jobs in their back-off would stop every trigger.  So the engine's
replicas share a second durable consumer, of FAILED ends only, with room for many
waiting ends; the work consumer acks retried ends unjudged (they are not the logical
job's end: see :meth:`JobStatus.is_final`).  Starting the next attempt is
:meth:`._firing.Firing.retry`: a claimed firing, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
import nats.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from .._bus._bundle import imported_from
from .._bus._connect import is_unanswered
from .._bus._eventbus import EventBus, deliveries
from .._events import EventDecodeError, JobStatusEvent, decode_event
from .._states import JobState
from .._subjects import ROOT
from ._consumer import ensure_push_consumer, own_delivery
from ._firing import Firing, NotYet, settle
from ._settings import EngineConfig

__all__ = ["RETRY_DURABLE", "RetryLoop"]

log = logging.getLogger("lwfm_bus.engine")

RETRY_DURABLE = "lwfm-engine-retries"
_RETRY_FILTER = f"{ROOT}.*.job.*.*.{JobState.FAILED.value}"
_MOST_WAITING = 65_536  # failed ends waiting out their back-off at once (more wait in the stream)


class RetryLoop:
    """Takes FAILED ends from the retry consumer and starts the next attempt of those a policy retries."""

    def __init__(self, bus: EventBus, firing: Firing, config: EngineConfig) -> None:
        self._bus = bus
        self._firing = firing
        self._config = config
        self._slots = asyncio.Semaphore(config.max_inflight)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        deliver = await ensure_push_consumer(
            self._bus, RETRY_DURABLE, _RETRY_FILTER, ack_wait_s=self._config.ack_wait_s, max_ack_pending=_MOST_WAITING
        )
        sub = await self._bus.nats.subscribe(deliver, queue=RETRY_DURABLE, pending_msgs_limit=0, pending_bytes_limit=0)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                async for msg in sub.messages:
                    if not own_delivery(msg, RETRY_DURABLE):
                        continue
                    await self._slots.acquire()
                    tg.start_soon(self._handle, msg)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._one(msg)
        finally:
            self._slots.release()

    async def _one(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data, self._bus.config.max_event_bytes, msg.subject)
        except EventDecodeError:
            await settle(msg.ack())  # the work consumer parks it as a dead letter
            return
        if (
            not isinstance(event, JobStatusEvent)
            or event.data.retry_next is None
            or imported_from(msg.headers) is not None  # its origin retried it
            or not self._firing.speaks_for(event.data.site)  # another site's engine retries it
        ):
            await settle(msg.ack())
            return
        try:
            await self._firing.retry(event, deliveries(msg) > 1, msg)
        except NotYet as later:  # its back-off: the server hands it back then
            await settle(msg.nak(delay=later.delay_s))
            return
        except Exception as exc:
            if is_unanswered(exc, self._bus.nats):
                log.info("engine: retry of job %s will be tried again: %r", event.data.job_id, exc)
            else:
                log.warning("engine: retry of job %s will be tried again: %r", event.data.job_id, exc, exc_info=True)
            await settle(msg.nak(delay=min(30.0, 0.5 * deliveries(msg))))
            return
        await settle(msg.ack())
