"""The metric families, read from live state when Prometheus scrapes: no instrumentation elsewhere.

In-process counters (the engine's :class:`~lwfm_bus.EngineStats`, the bus's stats, the
nats connection's reconnects) are read as they are.  What only the server knows -- how
far behind each consumer is, how many submissions wait or run, how many dead letters are
stored -- is asked for once per scrape (:meth:`ServerState.fetch`, before the
synchronous collector runs), so a scrape costs a few requests and nothing between scrapes.

Counters from in-process stats restart at 0 with the process, which Prometheus's
``rate()`` expects.  Label values are site names, event kinds, dead-letter reasons and
consumer names: small sets, and never a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import nats.errors
import nats.js.errors
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .._bus._eventbus import DLQ_STREAM, STREAM, SUBMIT_STREAM, EventBus
from .._engine._replica import DURABLE
from .._sites._agent import consumer_name
from ._observed import Observed

__all__ = ["LwfmCollector", "ServerState"]

log = logging.getLogger("lwfm_bus.metrics")

_FETCH_S = 5.0


@dataclass(frozen=True)
class _Lag:
    stream: str
    consumer: str
    site: str | None  # a site agents' consumer; None for the engine's
    pending: int  # stored, not yet handed to any engine or agent
    ack_pending: int  # handed out, not yet acknowledged


@dataclass
class ServerState:
    """What the server says at scrape time: consumers' lag and the stored dead letters."""

    lags: list[_Lag] = field(default_factory=list)
    dead_letters_stored: int | None = None

    @classmethod
    async def fetch(cls, observed: Observed) -> ServerState:
        """One request per consumer and one for the dead-letter stream; what fails is left out."""
        state = cls()
        bus = observed.bus
        if bus is None or not bus.nats.is_connected:
            return state
        wanted: list[tuple[str, str, str | None]] = []
        if observed.engine is not None:
            wanted.append((STREAM, DURABLE, None))
        wanted.extend((SUBMIT_STREAM, consumer_name(agent.site), agent.site) for agent in observed.agents)
        # Within a scrape's usual timeout (Prometheus: 10 s): a slow server leaves series out, never the scrape.
        with anyio.move_on_after(_FETCH_S):
            for stream, consumer, site in wanted:
                try:
                    info = await bus.jetstream.consumer_info(stream, consumer)
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                    log.debug("metrics: consumer %s of %s not read: %r", consumer, stream, exc)
                    continue
                lag = _Lag(stream, consumer, site, int(info.num_pending or 0), int(info.num_ack_pending or 0))
                state.lags.append(lag)
            state.dead_letters_stored = await _stored(bus, DLQ_STREAM)
        return state


async def _stored(bus: EventBus, stream: str) -> int | None:
    try:
        info = await bus.jetstream.stream_info(stream)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        log.debug("metrics: stream %s not read: %r", stream, exc)
        return None
    return int(info.state.messages)


class LwfmCollector(Collector):
    """Every lwfm metric of one process; ``state`` is replaced before each scrape."""

    def __init__(self, observed: Observed) -> None:
        self._observed = observed
        self.state = ServerState()

    def describe(self) -> list[Metric]:
        return []  # the families depend on what runs now: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._bus_metrics()
        yield from self._engine_metrics()
        yield from self._server_metrics()

    def _bus_metrics(self) -> Iterator[Metric]:
        bus = self._observed.bus
        connected = GaugeMetricFamily("lwfm_nats_connected", "1 while the connection to NATS is up.")
        connected.add_metric([], 1.0 if bus is not None and bus.nats.is_connected else 0.0)
        yield connected
        if bus is None:
            return
        stats = getattr(bus.nats, "stats", {}) or {}
        yield CounterMetricFamily(
            "lwfm_nats_reconnects",
            "Reconnections to NATS since this process started.",
            value=stats.get("reconnects", 0),
        )
        yield CounterMetricFamily("lwfm_events_published", "Events this process published.", value=bus.stats.published)
        dead = CounterMetricFamily(
            "lwfm_dead_letters",
            "Messages this process met that were not valid events, by reason (each is parked once).",
            labels=["reason"],
        )
        for reason, count in sorted(bus.stats.dead_letter_reasons.items()):
            dead.add_metric([reason], count)
        yield dead

    def _engine_metrics(self) -> Iterator[Metric]:
        engine = self._observed.engine
        if engine is None:
            return
        stats = engine.stats
        judged = CounterMetricFamily(
            "lwfm_engine_events_judged", "Events this engine replica judged, by kind.", labels=["kind"]
        )
        for kind, count in sorted(stats.judged.items()):
            judged.add_metric([kind], count)
        yield judged
        yield CounterMetricFamily("lwfm_engine_firings", "Triggers this replica fired.", value=stats.fired)
        yield CounterMetricFamily("lwfm_engine_expiries", "Triggers this replica expired.", value=stats.expired)
        yield CounterMetricFamily(
            "lwfm_engine_failures", "Firings whose submission failed for good.", value=stats.failed
        )
        yield CounterMetricFamily(
            "lwfm_engine_duplicates_skipped",
            "Firings already claimed or settled elsewhere.",
            value=stats.duplicates_skipped,
        )
        yield CounterMetricFamily(
            "lwfm_engine_retried_events", "Events handed back for a retry after an error.", value=stats.errors
        )
        indexed = GaugeMetricFamily("lwfm_engine_triggers_indexed", "Triggers this replica is waiting on.")
        indexed.add_metric([], len(engine.index))
        yield indexed
        latency = stats.dispatch_latency
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(latency.bounds, latency.counts, strict=False):
            running += count
            buckets.append((_le(bound), running))
        buckets.append(("+Inf", latency.total))
        yield HistogramMetricFamily(
            "lwfm_engine_dispatch_latency_seconds",
            "From the upstream event's storing in the stream to the downstream job's submission stored.",
            buckets=buckets,
            sum_value=latency.sum_s,
        )

    def _server_metrics(self) -> Iterator[Metric]:
        state = self.state
        pending = GaugeMetricFamily(
            "lwfm_consumer_pending",
            "Messages stored and not yet handed to this consumer's engines or agents (its lag).",
            labels=["stream", "consumer"],
        )
        acks = GaugeMetricFamily(
            "lwfm_consumer_ack_pending", "Messages handed out and not yet acknowledged.", labels=["stream", "consumer"]
        )
        queued = GaugeMetricFamily(
            "lwfm_submissions_queued", "Submissions waiting for a free slot of their site, by site.", labels=["site"]
        )
        running = GaugeMetricFamily(
            "lwfm_submissions_running",
            "Submissions held by the site's agents (jobs running), by site.",
            labels=["site"],
        )
        for lag in state.lags:
            pending.add_metric([lag.stream, lag.consumer], lag.pending)
            acks.add_metric([lag.stream, lag.consumer], lag.ack_pending)
            if lag.site is not None:
                queued.add_metric([lag.site], lag.pending)
                running.add_metric([lag.site], lag.ack_pending)
        yield from (pending, acks, queued, running)
        if state.dead_letters_stored is not None:
            stored = GaugeMetricFamily("lwfm_dead_letters_stored", "Messages held in the dead-letter stream.")
            stored.add_metric([], state.dead_letters_stored)
            yield stored


def _le(bound: float) -> str:
    return repr(float(bound))
