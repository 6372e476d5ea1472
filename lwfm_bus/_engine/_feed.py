"""The feed: every trigger event, in stream order, kept as the in-memory trigger index.

Every replica sees every trigger event through an ordered consumer: registrations go
into the :class:`TriggerIndex`, cancellations and final firings come out.

The barrier is what makes judging safe.  Before a replica judges an event at stream
sequence *s*, the feed must have applied every trigger event before *s*;
:meth:`TriggerFeed.barrier` asks the server one question per batch ("is there a
trigger event after the feed's position and at or before the newest work message?")
rather than one per event.

A schedule's ``tick`` events move its latest announced tick, and every change to a
schedule (registered, ticked, withdrawn) is told to :mod:`._schedules` through
``on_schedule``, so its timer needs no scan of the index.

Only this bus's own trigger events are applied.  One that came with an import (it
carries the ``Lwfm-Origin`` header, see :mod:`.._bus._bundle`) tells what the origin
registered or fired; it never becomes a trigger here, at start (the index is rebuilt
from the stream) or later, nor is it read back by sequence as one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from .._bus._bundle import imported_from
from .._bus._eventbus import ORDERED_HEARTBEAT_S, STREAM, EventBus
from .._events import (
    Event,
    EventDecodeError,
    TriggerCancelledEvent,
    TriggerExpiredEvent,
    TriggerFailedEvent,
    TriggerFiredEvent,
    TriggerRegisteredEvent,
    TriggerTickEvent,
    decode_event,
)
from .._triggers import Trigger
from ._matcher import TriggerIndex
from ._settings import EngineStats

__all__ = ["TriggerFeed"]


class TriggerFeed:
    """The trigger index of one replica, its definitions cache, and the barrier."""

    def __init__(self, bus: EventBus, trigger_events: str, definition_cache: int, stats: EngineStats) -> None:
        self._bus = bus
        self._subject = trigger_events
        self._cache_size = definition_cache
        self._stats = stats
        self.index = TriggerIndex()
        self._defs: OrderedDict[str, Trigger] = OrderedDict()
        self._seq = 0
        self._moved = asyncio.Condition()
        self._clean_upto = 0
        self._highest_work_seq = 0
        self._barrier_lock = asyncio.Lock()
        self.on_schedule: Callable[[str], None] = lambda trigger_id: None  # the schedules' timer is told

    @property
    def cached_definitions(self) -> int:
        """Trigger definitions held in memory (bounded by ``definition_cache``)."""
        return len(self._defs)

    async def last_seq(self) -> int:
        """The stream sequence of the newest trigger event now (0 if there is none)."""
        try:
            msg = await self._bus.jetstream.get_msg(STREAM, subject=self._subject)
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def run(self) -> None:
        """Apply every trigger event, from the first, until cancelled."""
        js = self._bus.jetstream
        sub = await js.subscribe(
            self._subject,
            stream=STREAM,
            ordered_consumer=True,
            idle_heartbeat=ORDERED_HEARTBEAT_S,  # judging waits on the feed: a lost node stalls it seconds, not 20 s
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
                if event is not None and imported_from(msg.headers) is None:
                    self._apply(event, seq)
                async with self._moved:
                    self._seq = seq
                    self._moved.notify_all()
        finally:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await sub.unsubscribe()

    def _apply(self, event: Event, seq: int) -> None:
        if isinstance(event, TriggerRegisteredEvent):
            self.index.add(event.data.definition, seq, event.time)
            self.remember(event.data.definition)
            if self.index.schedule(event.data.trigger_id) is not None:
                self.on_schedule(event.data.trigger_id)
        elif isinstance(event, TriggerCancelledEvent):
            self.index.remove(event.data.trigger_id)
        elif isinstance(event, TriggerTickEvent):
            watch = self.index.schedule(event.data.trigger_id)
            if watch is not None and (watch.last_tick is None or event.data.tick > watch.last_tick):
                watch.last_tick = event.data.tick
                self.on_schedule(event.data.trigger_id)
        elif isinstance(event, TriggerFiredEvent | TriggerExpiredEvent | TriggerFailedEvent):
            trigger = self._defs.get(event.data.trigger_id)
            once = trigger.fires_once() if trigger is not None else not self.index.is_per_arrival(event.data.trigger_id)
            if once:
                self.index.remove(event.data.trigger_id)
        self._stats.triggers_indexed = len(self.index)

    async def reached(self, seq: int) -> None:
        """Return once the feed has applied the trigger event at ``seq``."""
        async with self._moved:
            await self._moved.wait_for(lambda: self._seq >= seq)

    def saw_work(self, seq: int) -> None:
        """The work loop received a message at ``seq``: one barrier question covers it too."""
        if seq > self._highest_work_seq:
            self._highest_work_seq = seq

    async def barrier(self, seq: int) -> None:
        """Return once the feed has applied every trigger event up to ``seq``.

        One request answers for every message received so far: "is there a trigger
        event after the feed's position and at or before the newest work message?"
        """
        while seq > self._clean_upto:
            async with self._barrier_lock:
                if seq <= self._clean_upto:
                    return
                target = max(seq, self._highest_work_seq)
                position = self._seq
                try:
                    nxt = await self._bus.jetstream.get_msg(STREAM, seq=position + 1, subject=self._subject, next=True)
                    pending = int(nxt.seq or 0)
                except nats.js.errors.NotFoundError:
                    pending = 0
                if pending == 0 or pending > target:
                    self._clean_upto = max(self._clean_upto, target)
                    return
                await self.reached(pending)

    def remember(self, trigger: Trigger) -> None:
        """Keep a definition in the bounded cache (the newest last)."""
        self._defs[trigger.trigger_id] = trigger
        self._defs.move_to_end(trigger.trigger_id)
        while len(self._defs) > self._cache_size:
            self._defs.popitem(last=False)

    def cached(self, trigger_id: str) -> Trigger | None:
        return self._defs.get(trigger_id)

    async def definition(self, trigger_id: str, reg_seq: int) -> Trigger:
        """A trigger's definition: from the cache, else read back from its registration."""
        found = self._defs.get(trigger_id)
        if found is not None:
            return found
        raw = await self._bus.jetstream.get_msg(STREAM, seq=reg_seq)
        event = decode_event(raw.data or b"", self._bus.config.max_event_bytes, raw.subject)
        if not isinstance(event, TriggerRegisteredEvent) or event.data.trigger_id != trigger_id:
            raise RuntimeError(f"stream sequence {reg_seq} is not the registration of trigger {trigger_id}")
        origin = imported_from(raw.headers)
        if origin is not None:
            raise RuntimeError(
                f"stream sequence {reg_seq} is a registration imported from bus {origin}, not a trigger of this bus"
            )
        self.remember(event.data.definition)
        return event.data.definition
