"""The event bus: publish typed events, subscribe to them, replay the stream.

One JetStream stream (``LWFM``) captures ``lwfm.>`` on file storage with a duplicate
window; everything else the system keeps is a projection of it.  Subscriptions are
async iterators of typed events.  A message that cannot be decoded is never raised
out of the loop: it is parked on ``lwfm-dlq.<reason>.<stream>.<seq>`` (stream ``LWFM_DLQ``) with the
reason and the original bytes, once for good (see :meth:`EventBus.park`), counted, and
iteration goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)

from .._config import BusConfig
from .._errors import BusClosedError, PublishError
from .._events import Event, EventDecodeError, decode_event, encode_event
from .._federation import PUBLIC_STREAM_NAME, FederationMember
from .._subjects import CANCEL_ROOT, DLQ_ROOT, ROOT, SUBMIT_ROOT, dead_letter_subject
from ._replicas import is_not_clustered, not_clustered, raise_replicas, resolve_replicas

__all__ = [
    "DLQ_STREAM",
    "ORDERED_HEARTBEAT_S",
    "STREAM",
    "SUBMIT_STREAM",
    "BusStats",
    "DeadLetter",
    "EventBus",
    "PublishAck",
    "Subscription",
    "deliveries",
]

log = logging.getLogger("lwfm_bus.bus")

STREAM = "LWFM"
PUBLIC_STREAM = PUBLIC_STREAM_NAME  # a federation member's public names, what other sites source
DLQ_STREAM = "LWFM_DLQ"
SUBMIT_STREAM = "LWFM_SUBMIT"
# Dead letters are kept until the stream is full (then the oldest go): a bad message must
# stay parked as long as the history that holds it can be replayed, or a replay would
# park it again.
_DLQ_MAX_BYTES = 1 << 30
_PARKED_MEMORY = 100_000
_WRONG_LAST_SEQUENCE = 10071  # JetStream: "wrong last sequence" -- it is parked already
# An ordered consumer lives on one server; when that server goes (a cluster node lost), nats-py
# makes a new one after missing two heartbeats: 2-4 s with this, about 20 s with its default 5 s.
ORDERED_HEARTBEAT_S = 1.0
# A submission is kept this long: an agent takes it long before, and after it the job's
# own events (in the main stream) still tell an agent that it ran.
_SUBMIT_MAX_AGE_S = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The server's receipt: where the event landed, and whether it was a duplicate."""

    seq: int
    duplicate: bool


@dataclass(slots=True)
class BusStats:
    """Counters a long-running process can export; nothing here is needed for correctness."""

    published: int = 0
    duplicates: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


def _sources(cfg: StreamConfig) -> list[tuple[str, str, str, str]]:
    external = [(s, s.external or ExternalStream(api="")) for s in cfg.sources or []]
    return sorted((s.name or "", s.filter_subject or "", x.api, x.deliver or "") for s, x in external)


class EventBus:
    """Typed events over one NATS connection.  Obtain one from :func:`lwfm_bus.connect`."""

    def __init__(self, nc: NATS, config: BusConfig) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=config.request_timeout_s)
        self.config = config
        self.stats = BusStats()
        self.serves_embedded = False  # True when this process started the embedded server
        self.federation: FederationMember | None = None  # set when this bus is a federation member
        self.replicas = 1  # copies of every stream and bucket (see ._replicas); known once the streams are ensured
        self._parked: OrderedDict[str, None] = OrderedDict()  # (stream, seq) this process knows are parked

    # ------------------------------------------------------------------ plumbing

    @property
    def nats(self) -> NATS:
        """The underlying nats-py connection, for what the bus does not wrap."""
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        return self._js

    @property
    def connected_url(self) -> str | None:
        url = self._nc.connected_url
        return url.geturl() if url else None

    def _check_open(self) -> None:
        if self._nc.is_closed:
            raise BusClosedError("the bus connection is closed")

    async def ensure_streams(self) -> None:
        """Create the event and dead-letter streams, or bring their settings up to date.

        Idempotent and safe to race: the server accepts an identical ``add`` twice.
        A federation member's stream captures its own site names and sources the
        others' (see :mod:`._federation`); a process that was not told about the
        federation (a job, a tool) leaves a member's layout as it finds it.
        """
        self.replicas = resolve_replicas(self._nc, self.config.replicas)
        subjects, sources = [f"{ROOT}.>"], None
        if self.federation is not None:
            layout = self.federation.federation.stream_layout(self.federation.site)
            subjects = list(layout.subjects)
            fed, here = self.federation.federation, self.federation.site
            # Deliveries under a prefix per (origin, reader): the hub's accounts pass each reader its own only.
            sources = [
                StreamSource(
                    name=PUBLIC_STREAM,
                    filter_subject=subject,
                    external=ExternalStream(api=f"$JS.{site}.API", deliver=fed.feed_prefix(site, here)),
                )
                for site, subject in layout.sources
            ]
        await self._ensure(
            StreamConfig(
                name=STREAM,
                description="lwfm-bus events: the source of truth",
                subjects=subjects,
                sources=sources,
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                duplicate_window=self.config.dedup_window_s,
                num_replicas=self.replicas,
                allow_direct=True,
            )
        )
        if self.federation is not None:
            # What the other sites source: a copy of this site's public names, on which no
            # process of this site has a consumer (see _federation.PUBLIC_STREAM_NAME).
            public = self.federation.federation.names_of(self.federation.site)
            await self._ensure(
                StreamConfig(
                    name=PUBLIC_STREAM,
                    description="lwfm-bus events this site shows other sites (sourced from its own stream)",
                    subjects=[],
                    sources=[StreamSource(name=STREAM, filter_subject=f"{ROOT}.{name}.>") for name in public],
                    storage=StorageType.FILE,
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    duplicate_window=self.config.dedup_window_s,
                    num_replicas=self.replicas,
                )
            )
        # Submissions: one message per job (a second is refused by the server, see
        # _sites/_submit.py), kept apart from the events so that replaying, exporting or
        # sourcing history never hands a job to an agent again.  A federation member's
        # captures only its own names: a submission to another site goes to that site.
        names = ["*"]
        if self.federation is not None:
            names = [*self.federation.federation.names_of(self.federation.site), "local"]
        await self._ensure(
            StreamConfig(
                name=SUBMIT_STREAM,
                description="lwfm-bus submissions and cancel requests: what site agents must do",
                subjects=[f"{root}.{name}.>" for root in (SUBMIT_ROOT, CANCEL_ROOT) for name in names],
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_age=_SUBMIT_MAX_AGE_S,
                duplicate_window=self.config.dedup_window_s,
                num_replicas=self.replicas,
                allow_direct=True,
            ),
            # A process not told about a federation (a job, a tool) leaves a member's captures be.
            create_only=self.federation is None,
        )
        await self._ensure(
            StreamConfig(
                name=DLQ_STREAM,
                description="lwfm-bus dead letters: messages that were not valid events",
                subjects=[f"{DLQ_ROOT}.>"],
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_bytes=_DLQ_MAX_BYTES,
                duplicate_window=self.config.dedup_window_s,
                num_replicas=self.replicas,
            )
        )

    async def _await_hub(self, timeout: float = 10.0) -> None:
        """A leaf waits (bounded) for its link to the hub before it asks for sources.

        A source whose first consumer request finds no route is retried by the server
        only after a long back-off (~30 s); asking once the hub's JetStream answers
        through the link makes the first request the one that works.  A hub that is
        down is not waited for beyond ``timeout``: the server then resyncs the sources
        itself when the link comes up.
        """
        member = self.federation
        if member is None or member.is_hub:
            return
        subject = f"$JS.{member.federation.hub}.API.INFO"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                await self._nc.request(subject, b"", timeout=max(0.1, min(1.0, deadline - loop.time())))
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)  # the link is not up yet: a start-up wait, bounded
        log.warning("the hub %s did not answer within %.0fs; its events will follow when it does", subject, timeout)

    async def _ensure(self, wanted: StreamConfig, *, create_only: bool = False) -> None:
        assert wanted.name is not None
        try:
            info = await self._js.stream_info(wanted.name)
        except nats.js.errors.NotFoundError:
            if any(source.external for source in wanted.sources or []):
                await self._await_hub()
            try:
                await self._js.add_stream(wanted)
            except nats.js.errors.APIError as exc:
                if (wanted.num_replicas or 1) > 1 and is_not_clustered(exc):
                    raise not_clustered(f"stream {wanted.name}", wanted.num_replicas or 1) from None
                raise
            return
        have = info.config
        # An update never takes copies away (see ._replicas): a process that wants fewer keeps what is there.
        wanted = dataclasses.replace(wanted, num_replicas=max(wanted.num_replicas or 1, have.num_replicas or 1))
        if create_only or (have.sources and not wanted.sources and self.federation is None):
            # A federation member's layout is left as it is (by a process not told about the
            # federation, a job, a tool); its number of copies is everyone's to raise.
            await raise_replicas(self._js, have, wanted.num_replicas or 1)
            return
        new_sources = _sources(have) != _sources(wanted)
        if (
            new_sources
            or sorted(have.subjects or []) != sorted(wanted.subjects or [])
            or have.duplicate_window != wanted.duplicate_window
            or (wanted.max_age is not None and have.max_age != wanted.max_age)
        ):
            log.info("updating stream %s to the current settings", wanted.name)
            if new_sources and any(source.external for source in wanted.sources or []):
                await self._await_hub()  # ask for them once the link works
            try:
                await self._js.update_stream(wanted)  # never fewer copies than it has (see ._replicas)
            except nats.js.errors.APIError as exc:
                if (wanted.num_replicas or 1) > (have.num_replicas or 1) and is_not_clustered(exc):
                    raise not_clustered(f"stream {wanted.name}", wanted.num_replicas or 1) from None
                raise
        else:
            await raise_replicas(self._js, have, wanted.num_replicas or 1)

    # ------------------------------------------------------------------ publish

    async def publish(self, event: Event, *, headers: Mapping[str, str] | None = None) -> PublishAck:
        """Publish one event and wait until the server has stored it.

        The event id is sent as ``Nats-Msg-Id``, so publishing the same event again
        within the duplicate window is acknowledged as a duplicate and not stored.
        ``headers`` are stored with it (an import names the event's origin so).
        """
        self._check_open()
        subject = event.nats_subject()
        payload = encode_event(event, self.config.max_event_bytes)
        sent = {**headers, "Nats-Msg-Id": event.id} if headers else {"Nats-Msg-Id": event.id}
        try:
            ack = await self._js.publish(subject, payload, headers=sent, stream=STREAM)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            why = f"{exc!r}"
            if isinstance(exc, nats.js.errors.NoStreamResponseError) and self.federation is not None:
                own = ", ".join(self.federation.federation.names_of(self.federation.site))
                why = f"site {self.federation.site!r} publishes events only for its own site names ({own}) and 'local'"
            raise PublishError(f"event {event.id} on {subject} was not acknowledged: {why}") from exc
        duplicate = bool(ack.duplicate)
        self.stats.published += 1
        self.stats.duplicates += duplicate
        return PublishAck(seq=ack.seq, duplicate=duplicate)

    # ------------------------------------------------------------------ subscribe

    def subscribe(
        self,
        subject_filter: str = f"{ROOT}.>",
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        from_start: bool = False,
        follow: bool = True,
    ) -> Subscription:
        """Typed events matching a NATS wildcard filter, as an async iterator.

        By default only events published from now on are delivered.  ``start_seq``,
        ``start_time`` or ``from_start`` replay history first.  ``follow=False`` ends
        the iteration at the end of the stream as it was when the subscription began.
        """
        if sum(x is not None and x is not False for x in (start_seq, start_time, from_start)) > 1:
            raise ValueError("choose at most one of start_seq, start_time and from_start")
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        if start_seq is not None:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
        elif start_time is not None:
            if start_time.tzinfo is None:
                raise ValueError("start_time must be timezone-aware")
            cfg = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start_time,
            )
        elif from_start:
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return Subscription(self, subject_filter, cfg, follow=follow)

    def replay(
        self,
        subject_filter: str = f"{ROOT}.>",
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        follow: bool = False,
    ) -> Subscription:
        """History from a sequence or a time (default: the beginning), ending at the present."""
        return self.subscribe(
            subject_filter,
            start_seq=start_seq,
            start_time=start_time,
            from_start=start_seq is None and start_time is None,
            follow=follow,
        )

    # ------------------------------------------------------------------ dead letters

    async def dead_letter(self, msg: Msg, error: EventDecodeError) -> None:
        """Park an undecodable message with its reason; never raises."""
        where: tuple[str, int] | None
        try:
            meta = msg.metadata
            where = (meta.stream, meta.sequence.stream)
        except (nats.errors.NotJSMessageError, ValueError, IndexError, AttributeError):
            where = None
        await self.park(msg.subject, msg.data, error.reason.value, str(error), where)

    async def park(self, subject: str, data: bytes, reason: str, detail: str, where: tuple[str, int] | None) -> None:
        """Park a message that is not a usable event, once for good; never raises.

        Every reader that meets a bad message calls this (the index, each engine, each
        ``events``).  It is parked under ``lwfm-dlq.<reason>.<stream>.<seq>`` with the
        server refusing a second message on that subject, and a reader first asks
        whether it is parked already: so one bad message is one publish, however many
        readers meet it and however often the history is replayed.
        """
        self.stats.dead_lettered += 1
        reasons = self.stats.dead_letter_reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        stream, seq = where if where is not None else ("_", None)
        key = f"{stream}:{seq}"
        if seq is not None and key in self._parked:
            return
        headers = {
            "Lwfm-Dlq-Reason": reason,
            "Lwfm-Dlq-Error": _header_safe(detail),
            "Lwfm-Dlq-Subject": _header_safe(subject),
        }
        target = dead_letter_subject(reason, stream, seq)
        try:
            if seq is not None:
                if await self._parked_already(stream, seq):
                    self._remember_parked(key)
                    return
                headers["Lwfm-Dlq-Stream-Seq"] = str(seq)
                headers["Nats-Msg-Id"] = f"dlq:{key}"
                headers["Nats-Expected-Last-Subject-Sequence"] = "0"
            await self._js.publish(target, data, headers=headers)
            log.info("dead-lettered a message on %s: %s", _header_safe(subject), _header_safe(detail))
        except nats.js.errors.APIError as exc:
            if exc.err_code != _WRONG_LAST_SEQUENCE:
                log.error("could not dead-letter a message from %s: %r", _header_safe(subject), exc)
                return
        except Exception as exc:  # noqa: BLE001 - parking is best effort; the counter already moved
            log.error("could not dead-letter a message from %s: %r", _header_safe(subject), exc)
            return
        if seq is not None:
            self._remember_parked(key)

    async def _parked_already(self, stream: str, seq: int) -> bool:
        try:
            await self._js.get_msg(DLQ_STREAM, seq=1, subject=f"{DLQ_ROOT}.*.{stream}.{seq}", next=True)
        except nats.js.errors.NotFoundError:
            return False
        return True

    def _remember_parked(self, key: str) -> None:
        self._parked[key] = None
        if len(self._parked) > _PARKED_MEMORY:
            self._parked.popitem(last=False)

    def dead_letter_summary(self) -> str | None:
        """One line on the messages this process met that were not valid events, or None."""
        reasons = self.stats.dead_letter_reasons
        if not reasons:
            return None
        total = sum(reasons.values())
        counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
        return (
            f"{total} message{'s' if total != 1 else ''} on the bus {'are' if total != 1 else 'is'} not valid "
            f"event{'s' if total != 1 else ''} and {'were' if total != 1 else 'was'} skipped ({counts}); "
            "list them with 'lwfm-bus dead-letters'"
        )

    def dead_letters(self, *, follow: bool = False) -> AsyncIterator[DeadLetter]:
        """Iterate over parked messages (oldest first)."""
        return _iter_dead_letters(self, follow)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was not a valid event, with why."""

    reason: str
    error: str
    subject: str
    data: bytes
    seq: int


async def _iter_dead_letters(bus: EventBus, follow: bool) -> AsyncIterator[DeadLetter]:
    js = bus.jetstream
    info = await js.stream_info(DLQ_STREAM)
    last = info.state.last_seq
    if not follow and info.state.messages == 0:
        return
    sub = await js.subscribe(
        f"{DLQ_ROOT}.>",
        stream=DLQ_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=None)
            hdrs = msg.headers or {}
            seq = msg.metadata.sequence.stream
            yield DeadLetter(
                reason=hdrs.get("Lwfm-Dlq-Reason", ""),
                error=hdrs.get("Lwfm-Dlq-Error", ""),
                subject=hdrs.get("Lwfm-Dlq-Subject", ""),
                data=msg.data,
                seq=seq,
            )
            if not follow and seq >= last:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def deliveries(msg: Msg) -> int:
    """How many times JetStream has delivered this message (1: the first time; 2 if unknown,
    so that a caller that treats a first delivery more lightly errs on the careful side)."""
    try:
        return int(msg.metadata.num_delivered)
    except (nats.errors.NotJSMessageError, ValueError, IndexError, AttributeError):
        return 2


def _header_safe(text: str, limit: int = 1024) -> str:
    """Header values must be one line."""
    return " ".join(text.split())[:limit]


class Subscription:
    """An async iterator of typed events; use it with ``async with``.

    ``last_seq`` is the stream sequence of the last event yielded, so a projection
    can remember where to resume.
    """

    def __init__(self, bus: EventBus, subject_filter: str, config: ConsumerConfig, *, follow: bool) -> None:
        self._bus = bus
        self._filter = subject_filter
        self._config = config
        self._follow = follow
        self._sub: JetStreamContext.PushSubscription | None = None
        self._done = False
        self.last_seq = 0
        self.dead_lettered = 0

    async def __aenter__(self) -> Subscription:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        self._bus._check_open()
        stream = DLQ_STREAM if self._filter.startswith(DLQ_ROOT) else STREAM
        self._sub = await self._bus.jetstream.subscribe(
            self._filter, stream=stream, ordered_consumer=True, idle_heartbeat=ORDERED_HEARTBEAT_S, config=self._config
        )
        if not self._follow:
            # Nothing pending and nothing already pushed to us: the history is empty.
            info = await self._sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            self._done = info.num_pending == 0 and not delivered

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            # Shielded: closed by a cancelled task (a waiter that lost its race), the
            # unsubscribe must still reach the server.
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await sub.unsubscribe()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._sub is None:
                await self.open()
                continue
            try:
                msg = await self._sub.next_msg(timeout=None)
            except nats.errors.ConnectionClosedError:
                raise BusClosedError("the bus connection closed during iteration") from None
            meta = msg.metadata
            self.last_seq = meta.sequence.stream
            if not self._follow and meta.num_pending == 0:
                self._done = True
            try:
                event = decode_event(msg.data, self._bus.config.max_event_bytes, msg.subject)
            except EventDecodeError as err:
                self.dead_lettered += 1
                await self._bus.dead_letter(msg, err)
                continue
            self._bus.stats.delivered += 1
            return event

    async def next(self, timeout: float | None = None) -> Event:
        """The next event, or :class:`TimeoutError` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.__anext__(), timeout)
