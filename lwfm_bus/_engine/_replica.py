"""The trigger engine: events in, exactly-once downstream jobs out.

Each replica runs three loops:

* the **feed** (:mod:`._feed`) -- an ordered consumer over every ``trigger`` event,
  keeping the in-memory :class:`TriggerIndex` (registrations in, cancellations and
  final firings out).  Every replica sees every trigger event.
* the **work** loop (here) -- one durable consumer (``lwfm-engine``) shared by all
  replicas through a deliver group, over job, data, registration and deadline events.
  Each message goes to one replica, is judged (:mod:`._judging`), fired
  (:mod:`._firing`), and acked only once its effect is durable, so a replica killed
  at any instant leaves its messages to be redelivered.
* the **deadline** watcher (:mod:`._deadlines`) -- a KV watch on join progress; when a
  ``within`` window closes it publishes a ``trigger.deadline`` event, which the work
  loop judges.
* the **schedules** timer (:mod:`._schedules`) -- a heap of each schedule's next tick;
  when one comes it publishes a ``trigger.tick`` event, which the work loop judges.

Ordering.  Before a replica judges an event at stream sequence *s*, its feed must
have applied every trigger event before *s* (:meth:`TriggerFeed.barrier`: one server
request per batch).  A registration at *r* judges the upstream events before *r*
itself (the "condition already holds" case); events after *r* meet the trigger in
the index.  So no firing is missed, whichever replica sees what first.

Exactly once: see :mod:`._firing`.  The engine never opens a site itself: it works
the same for every site, here or federated.

Imports.  Trigger events that came with an import (``Lwfm-Origin``, see
:mod:`.._bus._bundle`) are the origin's: neither the feed nor the work loop takes
them, so an imported registration never fires here and an imported outcome settles
nothing here.  Imported job and data events are judged like any others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, runtime_checkable

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from .._bus._bundle import imported_from
from .._bus._connect import is_unanswered
from .._bus._eventbus import EventBus, deliveries
from .._events import EventDecodeError, decode_event
from .._sites._dispatch import Dispatcher
from .._subjects import ROOT
from ._consumer import ensure_push_consumer, own_delivery
from ._deadlines import Deadlines
from ._feed import TriggerFeed
from ._firing import Firing, settle
from ._judging import Judge
from ._matcher import TriggerIndex
from ._retrying import RetryLoop
from ._schedules import Schedules
from ._settings import EngineConfig, EngineStats
from ._store import EngineStore

__all__ = ["DURABLE", "Dispatching", "Engine", "EngineConfig", "EngineStats", "serve_engine"]

log = logging.getLogger("lwfm_bus.engine")

DURABLE = "lwfm-engine"
# The work consumer takes the whole stream through one filter and acks what is not work
# unread: nats-server delivers to a consumer with several filter subjects, on a stream
# where every event has its own subject, about 25 times more slowly (measured in
# bench/ingest.py; nats-server issues 4888 and 5040).
_WORK_FILTER = f"{ROOT}.>"
_WORK_KINDS = frozenset({"job", "data"})
# Outcomes come back to settle a claim whose replica died after announcing it.
_WORK_TRIGGER_DETAILS = frozenset({"registered", "deadline", "tick", "fired", "expired", "failed"})


@runtime_checkable
class Dispatching(Protocol):
    """A bus that can hand jobs to their sites' agents (``lwfm_bus.connect()`` gives one)."""

    dispatcher: Dispatcher


def _is_work(subject: str, trigger_site: str = "*", headers: Mapping[str, str] | None = None) -> bool:
    """Job and data events, and the trigger events the engine acts on (by subject and headers alone).

    In a federation an engine owns only the triggers registered at its own site
    (``trigger_site``): the others' arrive here by sourcing, to be judged at home.
    An imported trigger event (``headers`` name its origin) is the origin's, never work.
    """
    parts = subject.split(".")
    if len(parts) < 3:
        return False
    if parts[2] in _WORK_KINDS:
        return True
    return (
        parts[2] == "trigger"
        and parts[-1] in _WORK_TRIGGER_DETAILS
        and trigger_site in ("*", parts[1])
        and imported_from(headers) is None
    )


class Engine:
    """One replica.  Run it with :func:`serve_engine` (or ``await tg.start(engine.run)``)."""

    def __init__(self, bus: EventBus, config: EngineConfig | None = None) -> None:
        if not isinstance(bus, Dispatching):
            raise TypeError("an engine needs a bus that dispatches jobs: one from lwfm_bus.connect()")
        self._bus = bus
        # Whose triggers this engine judges: everyone's, or in a federation its own site's.
        self._trigger_site = bus.config.site if bus.federation is not None else "*"
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self._store = EngineStore(bus.jetstream, replicas=bus.replicas)
        self._feed = TriggerFeed(
            bus, f"{ROOT}.{self._trigger_site}.trigger.>", self.config.definition_cache, self.stats
        )
        self._firing = Firing(bus, bus.dispatcher, self._feed, self._store, self.config, self.stats)
        self._judge = Judge(bus, self._feed, self._store, self._firing)
        self._retries = RetryLoop(bus, self._firing, self.config)
        self._deadlines = Deadlines(
            self._store, bus.config.site, lambda trigger_id: trigger_id in self._feed.index, self._firing.publish
        )
        self._schedules = Schedules(self._feed.index, bus.config.site, self._firing.publish)
        self._feed.on_schedule = self._schedules.changed
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self._observers: list[Callable[[str, bool], Awaitable[None] | None]] = []

    @property
    def index(self) -> TriggerIndex:
        """The triggers this replica is waiting on (read it; the feed keeps it)."""
        return self._feed.index

    @property
    def cached_definitions(self) -> int:
        """Trigger definitions this replica holds in memory."""
        return self._feed.cached_definitions

    @property
    def look_back(self) -> bool:
        """Whether a registration judges what happened before it (always, unless a benchmark says not)."""
        return self._judge.look_back

    @look_back.setter
    def look_back(self, value: bool) -> None:
        self._judge.look_back = value

    def observe(self, observer: Callable[[str, bool], Awaitable[None] | None]) -> None:
        """Call ``observer(subject, done)`` as each work message starts (False) and ends (True).

        For benchmarks and tools that time the engine; correctness never depends on it.
        """
        self._observers.append(observer)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the store, rebuild the index, then judge events until cancelled."""
        await self._store.open()
        async with anyio.create_task_group() as tg:
            target = await self._feed.last_seq()
            tg.start_soon(self._feed.run)
            await self._feed.reached(target)
            log.info("engine %s: %d triggers indexed (feed at %d)", self.config.name, len(self.index), target)
            await tg.start(self._deadlines.run)
            await tg.start(self._work_loop)
            await tg.start(self._retries.run)
            await tg.start(self._schedules.run)
            task_status.started()

    # ------------------------------------------------------------------ the work loop

    async def _ensure_consumer(self) -> str:
        return await ensure_push_consumer(
            self._bus, DURABLE, _WORK_FILTER,
            ack_wait_s=self.config.ack_wait_s, max_ack_pending=max(1024, self.config.max_inflight * 4),
        )  # fmt: skip

    async def _work_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        deliver = await self._ensure_consumer()
        sub = await self._bus.nats.subscribe(deliver, queue=DURABLE, pending_msgs_limit=0, pending_bytes_limit=0)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                async for msg in sub.messages:
                    if not own_delivery(msg, DURABLE):
                        continue  # not our consumer's: no work, and nothing of ours to settle
                    seq = _stream_seq(msg)
                    self._feed.saw_work(seq)
                    if not _is_work(msg.subject, self._trigger_site, msg.headers):
                        await settle(msg.ack())
                        continue
                    await self._slots.acquire()
                    tg.start_soon(self._handle, msg, seq)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg, seq: int) -> None:
        try:
            await self._tell(msg.subject, False)
            try:
                await self._judge_one(msg, seq)
            finally:
                await self._tell(msg.subject, True)
        finally:
            self._slots.release()

    async def _judge_one(self, msg: Msg, seq: int) -> None:
        self.stats.events += 1
        kind = _kind_of(msg.subject)
        self.stats.judged[kind] = self.stats.judged.get(kind, 0) + 1
        try:
            event = decode_event(msg.data, self._bus.config.max_event_bytes, msg.subject)
        except EventDecodeError as err:
            self.stats.dead_lettered += 1
            await self._bus.dead_letter(msg, err)
            await settle(msg.term())
            return
        redelivered = deliveries(msg) > 1
        keepalive = _KeepAlive(msg, self.config.ack_wait_s / 3)
        try:
            await self._feed.barrier(seq)
            await self._judge.judge(event, seq, redelivered, msg)
        except Exception as exc:
            self.stats.errors += 1
            if is_unanswered(exc, self._bus.nats):  # the server away or electing a leader; the stream redelivers
                log.info("engine: event %s (seq %d) will be retried: %r", event.id, seq, exc)
            else:
                log.warning("engine: event %s (seq %d) will be retried: %r", event.id, seq, exc, exc_info=True)
            await settle(msg.nak(delay=min(30.0, 0.5 * deliveries(msg))))
            return
        finally:
            keepalive.cancel()
        await settle(msg.ack())

    async def _tell(self, subject: str, done: bool) -> None:
        for observer in self._observers:
            told = observer(subject, done)
            if told is not None:
                await told


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
        task = self._loop.create_task(settle(self._msg.in_progress()))
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)
        self._timer = self._loop.call_later(self._interval, self._beat)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _kind_of(subject: str) -> str:
    """The event kind a subject names (``lwfm.<site>.<kind>...``): a small, fixed set of label values."""
    parts = subject.split(".", 3)
    return parts[2] if len(parts) > 2 else "other"


def _stream_seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except (nats.errors.NotJSMessageError, ValueError, IndexError, AttributeError):
        return 0


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
