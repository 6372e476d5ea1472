"""Live status on a metro map: each station's runs, counted by state, from the names of a workflow's jobs.

A pipeline runner names every job it submits ``<pipeline>:<step-path>[<run>]@<iteration>``
(:func:`._graph.parse_job_name`), so the index's job records are all a map needs: no
extra events, and a map drawn by another process, later, shows the same thing.  Jobs
that are not the pipeline's (another name, or no name) are ignored.

A station's colour says where its runs are as a whole:

=========  ================================================================
pending    runs are waiting (READY, PENDING) and none has started
running    some run is under way, or some are done and more are to come
complete   every run completed, and no more are expected
failed     every run seen failed or was cancelled
mixed      some runs failed or were cancelled, others did not
=========  ================================================================

"More are to come" is judged against the runs the file announces (``parallel: 4``, a listed
``for_each``, a ``sequence``); a glob, a query or a loop announces none, so there the runs
seen so far are the whole count.  A nested pipeline's frame sums its stations, and a
station that has not started counts as one run still to come, so a sub-map is complete
only when every station in it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .._states import JobState
from ._graph import MetroMap, Station, step_path_of

__all__ = ["STATES", "StateName", "StationStatus", "status_from_jobs", "with_nested"]

StateName = Literal["pending", "running", "complete", "failed", "mixed"]
STATES: tuple[StateName, ...] = ("pending", "running", "complete", "failed", "mixed")

_ACTIVE = (JobState.RUNNING, JobState.INFO, JobState.FINISHING)
_WAITING = (JobState.READY, JobState.PENDING)
_BAD = (JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class StationStatus:
    """The runs of one station by state; ``runs``: how many the step makes, when the file says."""

    counts: Mapping[JobState, int] = field(default_factory=dict)
    runs: int | None = None

    @classmethod
    def of(cls, states: Iterable[JobState], runs: int | None = None) -> StationStatus:
        """``StationStatus.of([COMPLETE, RUNNING], runs=4)``."""
        return cls(dict(Counter(states)), runs)

    def _n(self, states: Iterable[JobState]) -> int:
        return sum(self.counts.get(s, 0) for s in states)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> int:
        return self.counts.get(JobState.COMPLETE, 0)

    @property
    def expected(self) -> int:
        """Runs the station makes in all, as far as is known now (never fewer than seen)."""
        return max(self.total, self.runs or 0)

    @property
    def state(self) -> StateName | None:
        """The colour of the station (see the module docstring); None before any run exists."""
        total, bad = self.total, self._n(_BAD)
        if total == 0:
            return None
        if bad:
            return "failed" if bad == total else "mixed"
        if self._n(_ACTIVE) or (self._n(_WAITING) and self.complete):
            return "running"
        if self._n(_WAITING):
            return "pending"
        return "complete" if total >= self.expected else "running"

    @property
    def badge(self) -> str:
        """``3/4``: runs completed of the runs known."""
        return f"{self.complete}/{self.expected}"


def status_from_jobs(m: MetroMap, jobs: Iterable[tuple[str | None, JobState]]) -> dict[str, StationStatus]:
    """Count ``(job name, state)`` pairs per station path; stations without a job are left out.

    ``jobs`` come oldest first.  A resumed run's new attempt of a step bears the name of
    the attempt it replaces: only the latest of each name counts, so a failure that was
    run again and completed is not shown beside its retry.
    """
    runs = {s.path: s.runs for s in m.walk()}
    states: dict[str, list[JobState]] = {}
    latest: dict[str, JobState] = {}
    for name, state in jobs:
        if name is not None:  # a job without a name is no station's
            latest[name] = state
    for name, state in latest.items():
        path = step_path_of(name, m.name)
        if path in runs:
            states.setdefault(path, []).append(state)
    return {path: StationStatus.of(states[path], runs[path]) for path in runs if path in states}


def with_nested(m: MetroMap, status: Mapping[str, StationStatus]) -> dict[str, StationStatus]:
    """``status`` plus a summary for every nested pipeline's station (its own jobs, if any, and its sub-map's)."""
    out = dict(status)

    def summary(station: Station) -> StationStatus | None:
        assert station.submap is not None
        counts: Counter[JobState] = Counter(out[station.path].counts if station.path in out else {})
        expected, seen = 0, False
        for inner in station.submap.stations:
            sub = summary(inner) if inner.submap is not None else out.get(inner.path)
            if sub is None:
                expected += inner.runs or 1  # not started: at least one run to come
                continue
            seen = True
            counts.update(sub.counts)
            expected += sub.expected
        if not seen and not counts:
            return None
        result = StationStatus(dict(counts), expected)
        out[station.path] = result
        return result

    for station in m.stations:
        if station.submap is not None:
            summary(station)
    return out
