"""Resuming a run: what failed or was cancelled runs again, as a new attempt.

A resumed run compiles to the same job ids as the run it continues, so what completed
or still runs is followed, never started twice: a job id is what makes a start
exactly-once.  For the same reason a job that FAILED or was CANCELLED -- a step whose
runner could not reach the bus, a command fixed since, a run cancelled half-way --
cannot run again under its id, and neither can a job whose trigger ended without
starting it (it waited on one of those, or was withdrawn).  Each such job gets the
next attempt's id, derived from its own, and whatever waited on it waits on the new
id.  Attempts chain: a second resume skips every attempt already spent.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping

from .._states import JobState
from ._plan import AfterJobs, OnData, Plan, PlannedJob

__all__ = ["attempt_id", "run_again"]

_SPENT_JOB = frozenset({JobState.FAILED, JobState.CANCELLED})
_SPENT_TRIGGER = frozenset({"cancelled", "expired", "failed"})  # the index's trigger states


def attempt_id(job_id: str, attempt: int) -> str:
    """The id of attempt ``attempt`` (1, 2, ...) after the first of the planned job ``job_id``."""
    return hashlib.sha256(f"{job_id}\x1fattempt\x1f{attempt}".encode()).hexdigest()[:32]


def run_again(
    plan: Plan,
    jobs: Mapping[str, JobState],
    triggers: Mapping[str, str],
    trigger_of: Callable[[str], str],
) -> Plan:
    """``plan`` with every spent job given its next unspent attempt id.

    ``jobs`` and ``triggers`` are the states the bus knows of this workflow's jobs and
    triggers; ``trigger_of`` names the trigger that starts a planned job (``plan.jobs``
    lists upstreams first).  A job that completed or runs keeps its id, and so does one
    that waits or was never started, unless an upstream it waits on was renamed: its
    trigger then names other jobs, so it is a new trigger, and a new attempt.
    """

    def spent(job_id: str, triggered: bool) -> bool:
        if job_id in jobs:
            return jobs[job_id] in _SPENT_JOB
        return triggered and triggers.get(trigger_of(job_id)) in _SPENT_TRIGGER

    renamed: dict[str, str] = {}
    for job in plan.jobs:
        if isinstance(job.start, OnData) and job.start.each:
            continue  # one job per arrival, ids made by the engine: its trigger stays as it is
        triggered = isinstance(job.start, (AfterJobs, OnData))  # else a root, which the runner submits
        current, attempt = job.job_id, 0
        waits_on_new = isinstance(job.start, AfterJobs) and any(j in renamed for j in job.start.job_ids)
        if waits_on_new and current not in jobs:
            attempt, current = 1, attempt_id(job.job_id, 1)  # its trigger names other upstreams: a new trigger
        while spent(current, triggered):
            attempt += 1
            current = attempt_id(job.job_id, attempt)
        if attempt:
            renamed[job.job_id] = current
    if not renamed:
        return plan

    def rename(job_id: str) -> str:
        return renamed.get(job_id, job_id)

    def again(job: PlannedJob) -> PlannedJob:
        start = job.start
        if isinstance(start, AfterJobs):
            start = AfterJobs(tuple(rename(j) for j in start.job_ids))
        return dataclasses.replace(job, job_id=rename(job.job_id), start=start)

    return dataclasses.replace(
        plan,
        jobs=[again(j) for j in plan.jobs],
        finals={step: [rename(j) for j in ids] for step, ids in plan.finals.items()},
        loops=[tuple(rename(j) for j in loop) for loop in plan.loops],
    )
