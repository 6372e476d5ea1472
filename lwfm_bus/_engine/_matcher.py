"""The engine's in-memory index: from one event to the few triggers it may concern.

Matching cost must not grow with the number of registered triggers, so nothing here
scans: a job event looks up its job id, a data event looks up each of its metadata
(key, value) pairs and each key.  Candidates are then checked exactly.

* Job-status triggers and joins are indexed by upstream job id, with a bitmask of
  the states that satisfy that upstream.
* Data-flow triggers are indexed by one *anchor*: an equality predicate if the
  signature has one (by key and value), else by key presence; a trigger with an
  empty signature is a candidate for every arrival.  A signature with only range or
  glob predicates on a key shared by very many triggers is the one case where the
  candidate list grows (documented in the README).
* Schedules are not matched against events at all: their ticks come from a timer
  (:mod:`._schedules`); the index keeps each one's timing and its latest announced tick.

The index holds only what matching needs (a few slots per trigger), not the
definitions: the engine fetches a definition by its stream sequence when it fires.
It is a projection of the trigger events and is rebuilt from the stream at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from .._meta import Metadata, MetaScalar
from .._states import JobState
from .._triggers import (
    DataTrigger,
    Eq,
    Glob,
    JobTrigger,
    JoinTrigger,
    Predicate,
    Schedule,
    ScheduleTrigger,
    Trigger,
    WorkflowTrigger,
)

__all__ = ["DataWatch", "JobWatch", "ScheduleWatch", "TriggerIndex", "satisfies", "state_mask"]

_BIT = {s: 1 << i for i, s in enumerate(JobState)}
_GLOB_CHARS = frozenset("*?[")


def state_mask(states: Iterable[JobState]) -> int:
    mask = 0
    for s in states:
        mask |= _BIT[s]
    return mask


def _eq_key(value: MetaScalar) -> tuple[str, Any]:
    """Hashable identity of a value for the equality index; booleans stay apart from numbers."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)  # 1 and 1.0 hash alike, as they compare
    return ("s", value)


class JobWatch:
    """A job-status trigger or join, as the index keeps it."""

    __slots__ = ("multi", "reg_seq", "required", "total", "trigger_id")

    def __init__(self, trigger_id: str, reg_seq: int, required: int, total: int) -> None:
        self.trigger_id = trigger_id
        self.reg_seq = reg_seq
        self.required = required
        self.total = total
        self.multi = required > 1 or total > 1


class DataWatch:
    """A data-flow trigger, as the index keeps it."""

    __slots__ = ("each", "predicates", "reg_seq", "source_site", "source_workflow", "trigger_id")

    def __init__(self, trigger: DataTrigger, reg_seq: int) -> None:
        self.trigger_id = trigger.trigger_id
        self.reg_seq = reg_seq
        self.predicates: tuple[tuple[str, Predicate], ...] = tuple(trigger.signature.items())
        self.source_site = trigger.source_site
        self.source_workflow = trigger.source_workflow
        self.each = trigger.fire == "each"

    def matches(self, metadata: Metadata, site: str, workflow_id: str | None) -> bool:
        if self.source_site is not None and site != self.source_site:
            return False
        if self.source_workflow is not None and workflow_id != self.source_workflow:
            return False
        for key, predicate in self.predicates:
            value = metadata.get(key)
            if value is None or not predicate.test(value):
                return False
        return True


class ScheduleWatch:
    """A schedule, as the index keeps it: its timing, when it was registered, its latest tick announced."""

    __slots__ = ("last_tick", "reg_seq", "registered_at", "timing", "trigger_id", "workflow_id")

    def __init__(self, trigger: ScheduleTrigger, reg_seq: int, registered_at: datetime) -> None:
        self.trigger_id = trigger.trigger_id
        self.reg_seq = reg_seq
        self.registered_at = registered_at
        self.workflow_id = trigger.workflow_id
        self.timing: Schedule = trigger.timing()
        self.last_tick: datetime | None = None


def _anchor(trigger: DataTrigger) -> tuple[str, Any] | str | None:
    """The most selective index entry for a signature: (key, value), or a key, or nothing."""
    for key, p in sorted(trigger.signature.items()):
        if isinstance(p, Eq):
            return (key, _eq_key(p.value))
        if isinstance(p, Glob) and not _GLOB_CHARS & set(p.pattern):
            return (key, _eq_key(p.pattern))
    if trigger.signature:
        return min(trigger.signature)
    return None


class TriggerIndex:
    """``add`` / ``remove`` triggers; ``by_job`` / ``by_data`` find candidates."""

    def __init__(self) -> None:
        self._by_job: dict[str, list[tuple[JobWatch, int]]] = {}
        self._by_value: dict[tuple[str, tuple[str, Any]], list[DataWatch]] = {}
        self._by_key: dict[str, list[DataWatch]] = {}
        self._any: list[DataWatch] = []
        self._job_watches: dict[str, tuple[JobWatch, tuple[str, ...]]] = {}
        self._data_watches: dict[str, DataWatch] = {}
        self._schedules: dict[str, ScheduleWatch] = {}
        self._by_workflow: dict[str, list[tuple[JobWatch, int]]] = {}
        self._workflow_watches: dict[str, tuple[JobWatch, str]] = {}

    def __len__(self) -> int:
        return len(self._job_watches) + len(self._data_watches) + len(self._schedules) + len(self._workflow_watches)

    def __contains__(self, trigger_id: str) -> bool:
        return (
            trigger_id in self._job_watches
            or trigger_id in self._data_watches
            or trigger_id in self._schedules
            or trigger_id in self._workflow_watches
        )

    def reg_seq(self, trigger_id: str) -> int | None:
        if trigger_id in self._job_watches:
            return self._job_watches[trigger_id][0].reg_seq
        if trigger_id in self._data_watches:
            return self._data_watches[trigger_id].reg_seq
        if trigger_id in self._schedules:
            return self._schedules[trigger_id].reg_seq
        if trigger_id in self._workflow_watches:
            return self._workflow_watches[trigger_id][0].reg_seq
        return None

    def schedule(self, trigger_id: str) -> ScheduleWatch | None:
        return self._schedules.get(trigger_id)

    def schedules(self) -> list[ScheduleWatch]:
        return list(self._schedules.values())

    def job_watch(self, trigger_id: str) -> JobWatch | None:
        found = self._job_watches.get(trigger_id)
        return found[0] if found is not None else None

    def is_per_arrival(self, trigger_id: str) -> bool:
        """Whether the trigger fires many times (per arrival, or per tick): one firing does not end it."""
        dw = self._data_watches.get(trigger_id)
        return (dw is not None and dw.each) or trigger_id in self._schedules

    def add(self, trigger: Trigger, reg_seq: int, registered_at: datetime | None = None) -> None:
        """Index a trigger registered at stream sequence ``reg_seq`` (idempotent)."""
        if trigger.trigger_id in self:
            return
        if isinstance(trigger, ScheduleTrigger):
            if registered_at is None:
                raise ValueError("a schedule is indexed with its registration time")
            self._schedules[trigger.trigger_id] = ScheduleWatch(trigger, reg_seq, registered_at)
            return
        if isinstance(trigger, WorkflowTrigger):
            watch = JobWatch(trigger.trigger_id, reg_seq, 1, 1)
            entry = (watch, state_mask(trigger.states))
            self._by_workflow.setdefault(trigger.watched_workflow, []).append(entry)
            self._workflow_watches[trigger.trigger_id] = (watch, trigger.watched_workflow)
            return
        if isinstance(trigger, JobTrigger | JoinTrigger):
            ups = trigger.all_upstreams()
            watch = JobWatch(trigger.trigger_id, reg_seq, trigger.required(), len(ups))
            for up in ups:
                self._by_job.setdefault(up.job_id, []).append((watch, state_mask(up.satisfying())))
            self._job_watches[trigger.trigger_id] = (watch, tuple(u.job_id for u in ups))
            return
        dw = DataWatch(trigger, reg_seq)
        anchor = _anchor(trigger)
        if anchor is None:
            self._any.append(dw)
        elif isinstance(anchor, str):
            self._by_key.setdefault(anchor, []).append(dw)
        else:
            self._by_value.setdefault(anchor, []).append(dw)
        self._data_watches[trigger.trigger_id] = dw

    def remove(self, trigger_id: str, trigger: Trigger | None = None) -> None:
        """Forget a trigger (cancelled, or fired for good)."""
        if trigger_id in self._job_watches:
            watch, job_ids = self._job_watches.pop(trigger_id)
            for job_id in job_ids:
                entries = self._by_job.get(job_id, [])
                entries[:] = [e for e in entries if e[0] is not watch]
                if not entries:
                    self._by_job.pop(job_id, None)
            return
        if self._schedules.pop(trigger_id, None) is not None:
            return
        if trigger_id in self._workflow_watches:
            watch, workflow_id = self._workflow_watches.pop(trigger_id)
            entries = self._by_workflow.get(workflow_id, [])
            entries[:] = [e for e in entries if e[0] is not watch]
            if not entries:
                self._by_workflow.pop(workflow_id, None)
            return
        dw = self._data_watches.pop(trigger_id, None)
        if dw is None:
            return
        for bucket in self._buckets_of(dw):
            if dw in bucket:
                bucket.remove(dw)

    def _buckets_of(self, dw: DataWatch) -> Iterator[list[DataWatch]]:
        yield self._any
        for key, p in dw.predicates:
            yield self._by_key.get(key, [])
            if isinstance(p, Eq):
                yield self._by_value.get((key, _eq_key(p.value)), [])
            if isinstance(p, Glob):
                yield self._by_value.get((key, _eq_key(p.pattern)), [])

    # ------------------------------------------------------------------ matching

    def by_job(self, job_id: str) -> list[tuple[JobWatch, int]]:
        """Triggers waiting on ``job_id``, each with the mask of states that satisfy it."""
        return self._by_job.get(job_id, [])

    def by_workflow(self, workflow_id: str | None) -> list[tuple[JobWatch, int]]:
        """Workflow triggers watching ``workflow_id``'s jobs, each with the mask of end states that fire it."""
        return self._by_workflow.get(workflow_id, []) if workflow_id is not None else []

    def by_data(self, metadata: Metadata, site: str, workflow_id: str | None) -> list[DataWatch]:
        """Data-flow triggers whose whole signature matches this arrival."""
        seen: set[str] = set()
        out: list[DataWatch] = []

        def consider(candidates: Iterable[DataWatch]) -> None:
            for dw in candidates:
                if dw.trigger_id not in seen and dw.matches(metadata, site, workflow_id):
                    seen.add(dw.trigger_id)
                    out.append(dw)

        consider(self._any)
        for key, value in metadata.items():
            consider(self._by_key.get(key, ()))
            for element in value if isinstance(value, list) else (value,):
                consider(self._by_value.get((key, _eq_key(element)), ()))
        return out


def satisfies(mask: int, state: JobState) -> bool:
    return bool(mask & _BIT[state])
