"""Retry policies: when a failed job runs again, after how long, and with what resources.

One preempted or node-failed Slurm job should not fail a whole run.  A policy says
how many attempts a job gets, which failures are worth another (a condition in the
pipeline expression language over the canonical state, the site's native state and
the exit code -- interpreted, never ``eval``-ed), how long to wait before the next
(exponential, with jitter), and how its resources grow after a given native state
(memory x2 after OUT_OF_MEMORY, time x1.5 after TIMEOUT).

Everything here is a pure function of the policy and one attempt's end, so every
process that reports that end -- the agent that launched the job, one that adopted
it, the engine -- reaches the same decision, and the jitter is drawn from the next
attempt's id rather than a random generator.  Each attempt is its own job, whose id
is derived from the logical job's id and the attempt number (:func:`retry_id`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ._expr import Expr, ExprError
from ._ids import derived_id
from ._states import JobState

__all__ = ["MAX_ATTEMPTS", "MAX_RETRY_DELAY_S", "WHEN_NAMES", "Growth", "RetryPolicy", "grown", "retry_id"]

MAX_ATTEMPTS = 100
"""Most attempts one job may get, its first included."""
WHEN_NAMES = frozenset({"state", "native_state", "exit_code", "attempt"})
"""The names a ``when`` condition may use."""
_MAX_DELAY_S = 7 * 24 * 3600.0
MAX_RETRY_DELAY_S = 2 * _MAX_DELAY_S
"""The longest wait an event may name before a next attempt (a policy's wait with its jitter stays below)."""
_NativeWord = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:+\-]{1,64}$")]


def retry_id(logical_job_id: str, attempt: int) -> str:
    """The job id of attempt ``attempt`` (2, 3, ...) of the logical job ``logical_job_id``.

    Derived, so every replica and every replay of one retry names the same job, and
    the submission store's one-submission-per-id rule makes the retry exactly-once.
    """
    return derived_id(logical_job_id, "retry", str(attempt))


class Growth(BaseModel):
    """Factors applied to the resources a job asked for, when an attempt ended in a given native state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mb: float | None = Field(default=None, ge=1.0, le=64.0, description="Memory factor (2 = double).")
    time_limit_s: float | None = Field(default=None, ge=1.0, le=64.0, description="Time-limit factor.")
    cpus_per_task: float | None = Field(default=None, ge=1.0, le=64.0, description="CPUs-per-task factor.")


class RetryPolicy(BaseModel):
    """How a failed job runs again.  Attempts count the first: ``max_attempts: 3`` is two retries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=MAX_ATTEMPTS, description="Attempts in all, the first included.")
    when: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        default=None,
        description=(
            "Retry only when this is true, e.g. \"native_state in ('NODE_FAIL', 'PREEMPTED') or exit_code == 75\"; "
            "names: state, native_state, exit_code, attempt.  Absent: every FAILED attempt is retried."
        ),
    )
    backoff_s: float = Field(default=1.0, ge=0.0, le=_MAX_DELAY_S, description="Wait before the second attempt.")
    backoff_factor: float = Field(default=2.0, ge=1.0, le=10.0, description="Each later wait is this times longer.")
    max_backoff_s: float = Field(default=600.0, ge=0.0, le=_MAX_DELAY_S, description="The longest wait.")
    jitter: float = Field(default=0.1, ge=0.0, le=1.0, description="Waits vary by up to this fraction, +/-.")
    grow: dict[_NativeWord, Growth] = Field(
        default_factory=dict,
        max_length=32,
        description="Resource factors after an attempt that ended in this native state, e.g. OUT_OF_MEMORY.",
    )

    @field_validator("when")
    @classmethod
    def _checked(cls, value: str | None) -> str | None:
        if value is not None:
            _condition(value)
        return value

    def _condition(self) -> Expr | None:
        return None if self.when is None else _condition(self.when)

    def retries(self, attempt: int, state: JobState, native_state: str | None, exit_code: int | None) -> bool:
        """Whether the end of attempt ``attempt`` calls for another.

        Only FAILED is retried: CANCELLED is someone's decision, and COMPLETE needs
        nothing.  A condition that cannot be evaluated for this end (``exit_code > 1``
        when there is no exit code) is false: a retry must be asked for.
        """
        if state is not JobState.FAILED or attempt >= self.max_attempts:
            return False
        if self.when is None:
            return True
        bound = {"state": state.value, "native_state": native_state, "exit_code": exit_code, "attempt": attempt}
        condition = self._condition()
        assert condition is not None
        try:
            return bool(condition.evaluate(bound))
        except ExprError:
            return False

    def delay_s(self, attempt: int, next_job_id: str) -> float:
        """Seconds to wait after attempt ``attempt`` ends before the next starts.

        The jitter is drawn from ``next_job_id`` (a hash), so every process that
        computes it agrees, and many jobs failing at once do not come back at once.
        """
        base = min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** min(attempt - 1, 64))
        draw = int.from_bytes(hashlib.sha256(next_job_id.encode()).digest()[:8], "big") / 2**64  # [0, 1)
        return round(max(0.0, base * (1.0 + self.jitter * (2.0 * draw - 1.0))), 3)

    def growth(self, native_state: str | None) -> Growth | None:
        """The resource factors for an attempt that ended in ``native_state`` (case-insensitive)."""
        if native_state is None:
            return None
        wanted = native_state.upper()
        return next((g for word, g in self.grow.items() if word.upper() == wanted), None)


def _condition(text: str) -> Expr:
    """The compiled condition; a ValueError (which pydantic reports) if it is not one, or names the unknown."""
    try:
        expr = Expr(text)
    except ExprError as exc:
        raise ValueError(f"retry 'when': {exc}") from None
    if not expr.names <= WHEN_NAMES:
        unknown = ", ".join(sorted(expr.names - WHEN_NAMES))
        raise ValueError(f"retry 'when' uses {unknown}; it may use only {', '.join(sorted(WHEN_NAMES))}")
    return expr


def grown(value: int | None, factor: float | None) -> int | None:
    """``value`` times ``factor``, rounded up; unset stays unset (nothing to grow from)."""
    if value is None or factor is None:
        return value
    return min(2**63 - 1, math.ceil(value * factor))
