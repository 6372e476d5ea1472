"""How an engine replica is tuned, and what it counts: shared by every part of the engine."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

__all__ = ["DISPATCH_BUCKETS_S", "EngineConfig", "EngineStats", "LatencyHistogram"]


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


# Upper bounds (seconds) of the dispatch latency buckets: a firing takes milliseconds when
# all is well, and seconds only when submits are retried or the server is far away.
DISPATCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class LatencyHistogram:
    """Counts of observed durations per bucket, kept here so the engine needs no metrics library.

    A Prometheus collector (:mod:`lwfm_bus._metrics`) reads it at scrape time.
    ``counts[i]`` counts observations <= ``bounds[i]`` and above the bound before it;
    the last slot counts those above every bound.
    """

    bounds: tuple[float, ...] = DISPATCH_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(DISPATCH_BUCKETS_S) + 1))
    total: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # the server's clock and ours may differ by a little
        slot = next((i for i, bound in enumerate(self.bounds) if seconds <= bound), len(self.bounds))
        self.counts[slot] += 1
        self.total += 1
        self.sum_s += seconds


@dataclass
class EngineStats:
    """Counters for people and benchmarks; correctness never depends on them."""

    events: int = 0
    fired: int = 0
    expired: int = 0
    failed: int = 0
    retried: int = 0
    """Next attempts of failed jobs submitted (or reported unsubmittable) by this replica."""
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    dispatch_calls: int = 0
    triggers_indexed: int = 0
    errors: int = 0
    judged: dict[str, int] = field(default_factory=dict)
    """Events judged, by kind (the subject's third token: job, data, trigger)."""
    dispatch_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    """From the upstream event's storing in the stream to the downstream's submission stored."""
