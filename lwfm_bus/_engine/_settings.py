"""How an engine replica is tuned, and what it counts: shared by every part of the engine."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

__all__ = ["EngineConfig", "EngineStats"]


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
