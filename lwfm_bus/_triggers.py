"""Triggers are data: "run this job when that happens", with pure checks and no I/O.

Five kinds, one discriminated union (``kind``):

* ``job-status`` -- one upstream job reaches a state (use case 3b);
* ``join`` -- all / any / at least N of several upstream jobs do, optionally within a
  window after the first one, else a fallback (3c);
* ``data-flow`` -- data arrives whose metadata matches a signature (3d);
* ``schedule`` -- a time comes: a cron expression or an interval, in a time zone,
  between optional start and end dates (one job per tick);
* ``workflow`` -- the first job of a workflow ends in a given state (a run's failure,
  for a notification).

The engine owns the state (progress, claims) and does the I/O; the models only answer
questions such as "does this state satisfy that upstream?" or "does this metadata
match?", so they are cheap to test and identical in every engine replica.

Every firing has a deterministic key (:func:`firing_key`): the trigger id for triggers
that fire once, the trigger id and the data id for per-arrival ones, the trigger id and
the tick (UTC, to the second) for schedules.  The job a firing
starts gets an id derived from that key, so a replayed event finds the same job.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from ._ids import derived_id, new_id
from ._jobs import JobDefn
from ._limits import FiniteFloat, Int64, PositiveFiniteFloat, PositiveInt64
from ._meta import Metadata, MetaKey, MetaScalar, MetaValue
from ._states import JobState
from ._subjects import Token

__all__ = [
    "MAX_UPSTREAMS",
    "DataTrigger",
    "Downstream",
    "Eq",
    "Glob",
    "JobTrigger",
    "JoinTrigger",
    "Match",
    "Predicate",
    "Present",
    "Range",
    "Schedule",
    "ScheduleTrigger",
    "Trigger",
    "Upstream",
    "WorkflowTrigger",
    "arrival_of",
    "firing_key",
    "tick_key",
    "tick_of",
    "trigger_adapter",
]

MAX_UPSTREAMS = 10_000
MAX_SIGNATURE_KEYS = 64

ShortText = Annotated[str, StringConstraints(max_length=256)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- job states


class Match(StrEnum):
    """How an upstream's ``states`` are read."""

    EXACT = "exact"
    """One of the listed states."""
    AT_OR_AFTER = "at-or-after"
    """One of the listed states or any later one (see :meth:`JobState.at_or_after`)."""
    TERMINAL = "terminal"
    """Any terminal state (COMPLETE, FAILED or CANCELLED); ``states`` is ignored."""


_TERMINAL = frozenset(s for s in JobState if s.is_terminal)


class Upstream(_Model):
    """One job a trigger waits for, and which of its states count."""

    job_id: Token = Field(description="The upstream job's id (it may not exist yet).")
    states: tuple[JobState, ...] = Field(
        default=(JobState.COMPLETE,), min_length=1, max_length=8, description="States that satisfy the condition."
    )
    match: Match = Field(default=Match.EXACT, description="exact, at-or-after, or terminal.")

    def satisfying(self) -> frozenset[JobState]:
        """Every state that satisfies this upstream: the states are judged by the state order."""
        if self.match is Match.TERMINAL:
            return _TERMINAL
        if self.match is Match.EXACT:
            return frozenset(self.states)
        return frozenset(s for s in JobState for wanted in self.states if s.at_or_after(wanted))

    def satisfied_by(self, state: JobState) -> bool:
        return state in self.satisfying()

    def ruled_out_by(self, state: JobState) -> bool:
        """The job ended without satisfying us: it never will."""
        return state.is_terminal and not self.satisfied_by(state)


# --------------------------------------------------------------------------- metadata predicates


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: object, b: object) -> bool:
    """Equality that keeps booleans apart from numbers (``True`` is not ``1`` here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def _elements(value: MetaValue) -> list[MetaScalar]:
    return list(value) if isinstance(value, list) else [value]


class Eq(_Model):
    """The value equals ``value`` (for a list value: contains it).  A bare value means this."""

    op: Literal["eq"] = "eq"
    value: MetaScalar

    def test(self, value: MetaValue) -> bool:
        return any(_same(v, self.value) for v in _elements(value))


class Glob(_Model):
    """A string value matches a shell-style pattern (``*``, ``?``, ``[abc]``), case-sensitively."""

    op: Literal["glob"] = "glob"
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=1024)]

    def test(self, value: MetaValue) -> bool:
        return any(isinstance(v, str) and fnmatch.fnmatchcase(v, self.pattern) for v in _elements(value))


class Range(_Model):
    """A numeric value lies within the given bounds (at least one bound)."""

    op: Literal["range"] = "range"
    ge: Int64 | FiniteFloat | None = None
    gt: Int64 | FiniteFloat | None = None
    le: Int64 | FiniteFloat | None = None
    lt: Int64 | FiniteFloat | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Self:
        if self.ge is None and self.gt is None and self.le is None and self.lt is None:
            raise ValueError("a range needs at least one of ge, gt, le, lt")
        return self

    def test(self, value: MetaValue) -> bool:
        return any(_is_number(v) and self._within(float(v)) for v in _elements(value))

    def _within(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
        )


class Present(_Model):
    """The key is present, whatever its value."""

    op: Literal["present"] = "present"

    def test(self, value: MetaValue) -> bool:
        return True


def _bare_value_is_eq(value: Any) -> Any:
    """A bare value means equality; dicts and predicate objects are predicates already."""
    return value if isinstance(value, dict | BaseModel) else {"op": "eq", "value": value}


Predicate: TypeAlias = Annotated[
    Eq | Glob | Range | Present, Field(discriminator="op"), BeforeValidator(_bare_value_is_eq)
]
"""One key's condition in a data signature."""


# --------------------------------------------------------------------------- what a firing starts


class Downstream(_Model):
    """The job a trigger starts, and where."""

    job: JobDefn = Field(description="What to run.")
    site: Token = Field(default="local", description="Site to run it on.")
    job_id: Token | None = Field(
        default=None,
        description="Id of the started job for triggers that fire once (default: derived from the firing key).",
    )
    workflow_id: Token | None = Field(
        default=None, description="Workflow of the started job (default: the workflow of the event that fired it)."
    )


class _TriggerBase(_Model):
    trigger_id: Token = Field(default_factory=new_id, description="Id of the trigger.")
    name: ShortText | None = Field(default=None, description="For people.")
    workflow_id: Token | None = Field(default=None, description="Workflow the trigger belongs to.")
    downstream: Downstream = Field(description="The job started when the trigger fires.")

    def fires_once(self) -> bool:
        return True


def _unique_upstreams(ups: tuple[Upstream, ...]) -> tuple[Upstream, ...]:
    seen: set[str] = set()
    for u in ups:
        if u.job_id in seen:
            raise ValueError(f"upstream job {u.job_id!r} is listed twice")
        seen.add(u.job_id)
    return ups


class JobTrigger(_TriggerBase):
    """Start ``downstream`` when ``upstream`` reaches one of its states (use case 3b)."""

    kind: Literal["job-status"] = "job-status"
    upstream: Upstream

    def all_upstreams(self) -> tuple[Upstream, ...]:
        return (self.upstream,)

    def required(self) -> int:
        return 1


class JoinTrigger(_TriggerBase):
    """Start ``downstream`` when all / any / at least N of ``upstreams`` are satisfied (use case 3c).

    With ``within_s``, the window opens at the first satisfied upstream; if it closes
    first, the trigger expires and starts ``fallback`` (if declared).  A join that can
    no longer be satisfied (too many upstreams ended otherwise) expires the same way.
    """

    kind: Literal["join"] = "join"
    upstreams: tuple[Upstream, ...] = Field(
        min_length=1, max_length=MAX_UPSTREAMS, description="The jobs joined (each at most once)."
    )
    mode: Literal["all", "any", "at-least"] = Field(default="all", description="How many upstreams must be satisfied.")
    at_least: PositiveInt64 | None = Field(default=None, description="N, for mode at-least.")
    within_s: PositiveFiniteFloat | None = Field(
        default=None, description="Seconds after the first satisfied upstream before the join expires."
    )
    fallback: Downstream | None = Field(default=None, description="The job started when the join expires.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        _unique_upstreams(self.upstreams)
        if self.mode == "at-least":
            if self.at_least is None:
                raise ValueError("mode 'at-least' needs at_least")
            if self.at_least > len(self.upstreams):
                raise ValueError(f"at_least={self.at_least} exceeds the {len(self.upstreams)} upstreams")
        elif self.at_least is not None:
            raise ValueError(f"at_least is only for mode 'at-least', not {self.mode!r}")
        return self

    def all_upstreams(self) -> tuple[Upstream, ...]:
        return self.upstreams

    def required(self) -> int:
        if self.mode == "any":
            return 1
        if self.mode == "at-least":
            assert self.at_least is not None
            return self.at_least
        return len(self.upstreams)


class DataTrigger(_TriggerBase):
    """Start ``downstream`` when data arrives whose metadata matches ``signature`` (use case 3d).

    Every key of the signature must match.  ``fire: each`` starts one job per matching
    arrival; ``once`` starts one job in all.  With ``existing: include`` data that
    arrived before the trigger was registered counts too.
    """

    kind: Literal["data-flow"] = "data-flow"
    signature: Annotated[dict[MetaKey, Predicate], Field(max_length=MAX_SIGNATURE_KEYS)] = Field(
        default_factory=dict, description="Per metadata key: a value (equality) or a predicate."
    )
    source_site: Token | None = Field(default=None, description="Only data on this site.")
    source_workflow: Token | None = Field(default=None, description="Only data of this workflow.")
    fire: Literal["once", "each"] = Field(default="once", description="One job in all, or one per arrival.")
    existing: Literal["include", "ignore"] = Field(
        default="include", description="Whether data that arrived before registration counts."
    )

    def fires_once(self) -> bool:
        return self.fire == "once"

    def matches(self, metadata: Metadata, site: str, workflow_id: str | None) -> bool:
        """Pure check of one arrival against the signature and the filters."""
        if self.source_site is not None and site != self.source_site:
            return False
        if self.source_workflow is not None and workflow_id != self.source_workflow:
            return False
        for key, predicate in self.signature.items():
            if key not in metadata or not predicate.test(metadata[key]):
                return False
        return True


# --------------------------------------------------------------------------- schedules

MAX_CATCHUP = 1000
"""The most missed ticks a schedule with ``catchup`` starts after downtime (the latest ones)."""

_SECOND = timedelta(seconds=1)


def _whole_second(t: datetime) -> datetime:
    """Ticks are whole UTC seconds: one spelling of each tick in every replica's firing key."""
    return t.astimezone(UTC).replace(microsecond=0)


class Schedule(_Model):
    """When a schedule ticks: a cron expression or an interval, in a time zone, between two dates.

    Pure arithmetic on datetimes (cron by ``croniter``, never parsed here), so every
    engine replica computes the same ticks.  A tick is a whole second, in UTC.
    """

    cron: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="A cron expression (5 fields; a 6th is seconds), read in tz."
    )
    interval_s: PositiveInt64 | None = Field(
        default=None, description="Seconds between ticks, counted from start (else from registration)."
    )
    tz: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        default="UTC", description="IANA time zone the cron expression is read in, e.g. Europe/Paris."
    )
    start: AwareDatetime | None = Field(default=None, description="No tick before this (with a UTC offset).")
    end: AwareDatetime | None = Field(default=None, description="No tick after this (with a UTC offset).")
    catchup: bool = Field(
        default=False,
        description=(
            "After downtime, start every missed tick (at most 1000, the latest); false: only the latest missed one."
        ),
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> Self:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("a schedule needs exactly one of cron and interval_s")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r} (an IANA name such as Europe/Paris)") from exc
        if self.cron is not None and not _croniter().is_valid(self.cron):
            raise ValueError(f"not a cron expression: {self.cron!r}")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        return self

    def _anchor(self, registered_at: datetime) -> datetime:
        return _whole_second(self.start if self.start is not None else registered_at)

    def _floor(self, registered_at: datetime) -> datetime:
        """Ticks are after the registration (a trigger has no ticks from before it existed) and not before start."""
        floor = _whole_second(registered_at)
        if self.start is not None:
            floor = max(floor, _whole_second(self.start) - _SECOND)
        return floor

    def next_after(self, after: datetime, registered_at: datetime) -> datetime | None:
        """The first tick strictly after ``after``; None once the schedule has ended."""
        lower = max(_whole_second(after), self._floor(registered_at))
        if self.interval_s is not None:
            anchor = self._anchor(registered_at)
            k = (lower - anchor) // timedelta(seconds=self.interval_s) + 1
            tick = anchor + k * timedelta(seconds=self.interval_s)
        else:
            assert self.cron is not None
            local = lower.astimezone(ZoneInfo(self.tz))
            tick = _whole_second(_croniter()(self.cron, local).get_next(datetime))
        if self.end is not None and tick > self.end:
            return None
        return tick

    def due(self, after: datetime, until: datetime, registered_at: datetime) -> list[datetime]:
        """The ticks in (``after``, ``until``] that start jobs, oldest first.

        With ``catchup`` the latest :data:`MAX_CATCHUP` of them; without, the latest
        one only (a tick missed while no engine ran is not made up for, but the
        schedule's most recent tick still starts, however late).
        """
        lower = max(_whole_second(after), self._floor(registered_at))
        upper = _whole_second(until)
        if self.end is not None:
            upper = min(upper, _whole_second(self.end))
        if upper <= lower:
            return []
        limit = MAX_CATCHUP if self.catchup else 1
        if self.interval_s is not None:
            step = timedelta(seconds=self.interval_s)
            anchor = self._anchor(registered_at)
            hi = (upper - anchor) // step
            lo = max((lower - anchor) // step + 1, hi - limit + 1)
            return [anchor + k * step for k in range(lo, hi + 1)]
        assert self.cron is not None
        walk = _croniter()(self.cron, (upper + _SECOND).astimezone(ZoneInfo(self.tz)))
        ticks = itertools.takewhile(lambda t: t > lower, (_whole_second(walk.get_prev(datetime)) for _ in _forever()))
        return sorted(itertools.islice(ticks, limit))


def _croniter() -> Any:
    """The croniter class, imported on first use: every event model imports this module
    (a job's ``lwfm-bus emit`` too, issue #21), and only cron schedules need it."""
    from croniter import croniter  # type: ignore[import-untyped]

    return croniter


def _forever() -> Iterator[None]:
    while True:
        yield None


class ScheduleTrigger(_TriggerBase, Schedule):
    """Start ``downstream`` at each tick of a schedule: a new job per tick.

    The job's id is derived from the trigger id and the tick, so a tick starts its job
    once across engine replicas and restarts.  The job's environment names its tick
    (``LWFM_SCHEDULE_TICK``, ISO 8601 UTC).
    """

    kind: Literal["schedule"] = "schedule"

    @model_validator(mode="after")
    def _per_tick_ids(self) -> Self:
        if self.downstream.job_id is not None:
            raise ValueError("a schedule starts one job per tick, whose ids are derived: drop downstream.job_id")
        return self

    def fires_once(self) -> bool:
        return False

    def timing(self) -> Schedule:
        """Only the schedule (what an engine keeps in memory for each)."""
        return Schedule.model_validate({f: getattr(self, f) for f in Schedule.model_fields})


class WorkflowTrigger(_TriggerBase):
    """Start ``downstream`` when the first job of a workflow ends in one of ``states`` (once).

    "Tell me when anything in this run fails", without listing its jobs: the engine
    finds these by the ended job's workflow, so the cost does not grow with the number
    of triggers or of the workflow's jobs.  A job's end counts when it is final -- an
    end its retry policy runs again is not.  The trigger's own ``workflow_id`` may be
    left unset, so that cancelling the watched workflow does not withdraw it.
    """

    kind: Literal["workflow"] = "workflow"
    watched_workflow: Token = Field(description="The workflow whose jobs are watched.")
    states: tuple[JobState, ...] = Field(
        default=(JobState.FAILED, JobState.CANCELLED),
        min_length=1,
        max_length=3,
        description="End states that fire it (terminal states only).",
    )

    @model_validator(mode="after")
    def _terminal_states(self) -> Self:
        if not all(s.is_terminal for s in self.states):
            raise ValueError("a workflow trigger fires on jobs' ends: COMPLETE, FAILED or CANCELLED")
        return self


Trigger: TypeAlias = Annotated[
    JobTrigger | JoinTrigger | DataTrigger | ScheduleTrigger | WorkflowTrigger, Field(discriminator="kind")
]
"""Any trigger; ``kind`` selects the model."""

_TRIGGER_ADAPTER: TypeAdapter[Trigger] = TypeAdapter(Trigger)


def trigger_adapter() -> TypeAdapter[Trigger]:
    """Validates a trigger from JSON or Python data (the trigger file format)."""
    return _TRIGGER_ADAPTER


def tick_key(trigger_id: str, tick: datetime) -> str:
    """The firing key of one tick of a schedule: the trigger id and the tick, UTC, to the second."""
    return f"{trigger_id}/{_whole_second(tick).strftime('%Y%m%dT%H%M%SZ')}"


def firing_key(trigger: Trigger, data_id: str | None = None, tick: datetime | None = None) -> str:
    """The deterministic key of one firing (or expiry) of ``trigger``."""
    if isinstance(trigger, ScheduleTrigger):
        if tick is None:
            raise ValueError("a schedule fires once per tick")
        return tick_key(trigger.trigger_id, tick)
    if isinstance(trigger, DataTrigger) and trigger.fire == "each":
        if data_id is None:
            raise ValueError("a per-arrival trigger fires once per data id")
        return f"{trigger.trigger_id}/{data_id}"
    return trigger.trigger_id


def tick_of(trigger: Trigger, key: str) -> datetime | None:
    """The tick a schedule's firing is for (the inverse of :func:`firing_key`); None otherwise."""
    if isinstance(trigger, ScheduleTrigger):
        return datetime.strptime(key.rpartition("/")[2], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return None


def arrival_of(trigger: Trigger, key: str) -> str | None:
    """The data id a per-arrival firing is for (the inverse of :func:`firing_key`); None otherwise."""
    if isinstance(trigger, DataTrigger) and trigger.fire == "each":
        return key.rpartition("/")[2]
    return None


def downstream_job_id(trigger: Trigger, key: str, *, fallback: bool = False) -> str:
    """The id of the job a firing starts: fixed by the trigger, or derived from the key."""
    target = trigger.fallback if fallback and isinstance(trigger, JoinTrigger) else trigger.downstream
    if target is not None and target.job_id is not None and trigger.fires_once():
        return target.job_id
    return derived_id(key, "fallback" if fallback else "downstream")
