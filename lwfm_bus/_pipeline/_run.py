"""``lwfm-bus run``: put a compiled pipeline on the bus and follow it to the end.

The runner registers one trigger per conditional job, submits the jobs that wait for
nothing, and then only *watches*: the engine starts everything else.  It follows the
workflow's own events (replayed from the start, so nothing published before the
subscription is missed), prints each job's progress, and decides the outcome: done
when every step's final jobs completed; failed as soon as one job failed or one
trigger could not start its job.  On failure it withdraws the triggers that have not
fired, so nothing more of this run starts, waits for the jobs still running and
reports.  Triggers left over by a loop that stopped early are withdrawn the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._client import Bus
from .._errors import LwfmBusError, PipelineError, PipelineIssue, WorkspaceError
from .._events import (
    JobStatus,
    JobStatusEvent,
    TriggerCancelledEvent,
    TriggerExpiredEvent,
    TriggerFailedEvent,
    TriggerFiredEvent,
)
from .._index._projection import JobRecord
from .._notify import notify_triggers
from .._query import DataQuery, DataRecord
from .._states import JobState
from .._subjects import workflow_filter
from .._triggers import DataTrigger, Downstream, JobTrigger, JoinTrigger, Trigger, Upstream, WorkflowTrigger
from ._again import run_again
from ._model import Pipeline
from ._plan import AfterJobs, OnData, Plan, PlannedJob, Root, compile_plan
from ._stepexec import UP_TO_DATE

__all__ = ["RunReport", "plural", "run_pipeline"]

Echo = Callable[[str], None]
StderrTail = Callable[[str], Awaitable[list[str]]]
_TAIL_LINES, _TAIL_BYTES, _TAIL_WIDTH = 3, 64 * 1024, 300  # of a failed job's stderr, in its progress line
_TAIL_WAIT_S = 15.0  # reading that stderr from a remote site: the run's progress waits meanwhile
_SETTLED = (TriggerFiredEvent, TriggerExpiredEvent, TriggerFailedEvent, TriggerCancelledEvent)


@dataclass
class RunReport:
    """How a run ended: per step, the final runs done out of planned; the failures."""

    workflow_id: str
    ok: bool
    steps: dict[str, tuple[int, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    up_to_date: int = 0  # runs whose outputs were already recorded for the same inputs


def _trigger_id(job: PlannedJob) -> str:
    return _trigger_of(job.job_id)


def _trigger_of(job_id: str) -> str:
    return f"t-{job_id}"


def _trigger_for(job: PlannedJob, workflow_id: str) -> Trigger:
    each = isinstance(job.start, OnData) and job.start.each  # one job per arrival: ids derived by the engine
    target = Downstream(job=job.defn, site=job.site, job_id=None if each else job.job_id, workflow_id=workflow_id)
    common: dict[str, Any] = {"trigger_id": _trigger_id(job), "workflow_id": workflow_id, "downstream": target}
    start = job.start
    if isinstance(start, AfterJobs):
        if len(start.job_ids) == 1:
            return JobTrigger(upstream=Upstream(job_id=start.job_ids[0]), **common)
        return JoinTrigger(upstreams=tuple(Upstream(job_id=j) for j in start.job_ids), **common)
    assert isinstance(start, OnData)
    return DataTrigger.model_validate(
        {
            "signature": dict(start.signature),
            "source_site": start.site,
            "source_workflow": workflow_id if start.workflow else None,
            "fire": "each" if start.each else "once",
            "existing": start.existing,
            **common,
        }
    )


class _Follower:
    """Follows a run's jobs: their states, the lines that show them, the failures.

    A loop's jobs are shown in the loop's order, though their events may come otherwise:
    an iteration's step runner notates the marker that starts the next iteration (or the
    gate that stands for the finished loop) before its own process exits, so the next
    one -- or the gate, a no-op -- often starts, or even completes, before the end of
    the iteration that started it is reported.  Such lines wait until every earlier job
    of the loop that started has ended; the states themselves are taken at once.
    """

    def __init__(self, plan: Plan, echo: Echo, stderr_tail: StderrTail | None = None) -> None:
        self.plan = plan
        self.echo = echo
        self.stderr_tail = stderr_tail
        self.jobs = {j.job_id: j for j in plan.jobs}
        self.triggers = {_trigger_id(j): j for j in plan.jobs if not isinstance(j.start, Root)}
        self.state: dict[str, JobState] = {}
        self.attempts: dict[str, int] = {}  # the latest attempt heard of, by planned job
        self.finals = {j for ids in plan.finals.values() for j in ids}
        self.loop_of = {job_id: loop for loop in plan.loops for job_id in loop}
        self.held: dict[str, list[Callable[[], list[str]]]] = {}  # a loop job's lines, waiting for earlier ones
        self.failures: list[str] = []
        self.up_to_date: set[str] = set()
        self.started = time.monotonic()

    def _say(self, lines: list[str]) -> None:
        """A progress line, after the time since the start; the lines after it (a stderr tail) below it."""
        if lines:
            self.echo(f"{time.monotonic() - self.started:7.1f}s  {lines[0]}")
        for line in lines[1:]:
            self.echo(f"{'':10}| {line}")

    def _show(self, job_id: str, lines: Callable[[], list[str]]) -> None:
        """Say ``lines()`` now, or once the jobs before this one in its loop have ended."""
        if job_id not in self.loop_of:
            self._say(lines())
            return
        self.held.setdefault(job_id, []).append(lines)
        self._release(self.loop_of[job_id])

    def _release(self, loop: tuple[str, ...], everything: bool = False) -> None:
        """Say the held lines of ``loop``'s jobs, in order, up to the first job still running."""
        for job_id in loop:
            for lines in self.held.pop(job_id, []):
                self._say(lines())
            state = self.state.get(job_id)
            if state is not None and not state.is_terminal and not everything:
                return

    def flush(self) -> None:
        """Say every line still held (the run ends: nothing more will come)."""
        for loop in self.plan.loops:
            self._release(loop, everything=True)

    def _progress(self, job: PlannedJob, d: JobStatus, tail: list[str]) -> list[str]:
        state = d.state
        extra = f" (exit {d.exit_code})" if state is JobState.FAILED and d.exit_code is not None else ""
        if (d.attempt or 1) > 1:
            extra += f" (attempt {d.attempt})"
        finals = self.plan.finals.get(job.step, [])
        if d.retry_next is not None:  # not the step's end: it runs again
            extra += f"   retrying in {d.retry_delay_s or 0:.0f}s as job {d.retry_next}"
        elif state.is_terminal and finals:  # the step's progress: its finished runs (already shown) out of all
            done = sum(self.state.get(j) is JobState.COMPLETE and j not in self.held for j in finals)
            extra += f"   [{job.step}: {done}/{len(finals)}]"
        if state.is_terminal and state is not JobState.COMPLETE:
            extra += f"   job {d.job_id}"  # for 'lwfm-bus logs JOB --stderr'
        return [f"{job.name:<40} {state.value}{extra}", *tail]

    async def on_job(self, event: JobStatusEvent) -> None:
        d = event.data
        key = d.logical_id  # an attempt stands for its planned job
        job = self.jobs.get(key)
        if job is None:
            return
        if d.state is JobState.INFO:
            if d.info == UP_TO_DATE:
                self.up_to_date.add(key)
                self._show(key, lambda: [f"{job.name:<40} up to date (not run again)"])
            return
        attempt, known = d.attempt or 1, self.attempts.get(key, 1)
        if attempt < known:
            return  # an earlier attempt's late news
        if attempt > known:
            self.attempts[key] = attempt
            self.state.pop(key, None)  # a new attempt starts its states over
        before = self.state.get(key)
        if before is not None and not d.state.at_or_after(before):
            return  # the state order, not arrival order, says what a job is in
        self.state[key] = JobState.PENDING if d.retry_next is not None else d.state
        if d.state is JobState.RUNNING or d.state.is_terminal:
            tail: list[str] = []
            if d.state is JobState.FAILED and self.stderr_tail is not None:
                tail = await self.stderr_tail(d.job_id)
            self._show(key, functools.partial(self._progress, job, d, tail))
        if d.is_final and d.state is not JobState.COMPLETE:
            self.failures.append(f"{job.name}: {d.state.value}" + (f" ({d.info})" if d.info else ""))

    def on_trigger_failed(self, trigger_id: str, reason: str) -> None:
        job = self.triggers.get(trigger_id)
        if job is not None:
            self._say([f"{job.name:<40} NOT STARTED: {reason}"])
            self.failures.append(f"{job.name}: could not be started: {reason}")

    @property
    def done(self) -> bool:
        return all(self.state.get(j) is JobState.COMPLETE for j in self.finals)

    @property
    def active(self) -> bool:
        return any(not s.is_terminal for s in self.state.values())

    def report(self, ok: bool) -> RunReport:
        steps = {
            path: (sum(self.state.get(j) is JobState.COMPLETE for j in ids), len(ids))
            for path, ids in self.plan.finals.items()
        }
        return RunReport(self.plan.workflow_id, ok, steps, list(self.failures), len(self.up_to_date))


def _sites(pipeline: Pipeline) -> set[str]:
    found = {pipeline.site}
    for name, step in pipeline.steps.items():
        found |= _sites(pipeline.nested(name)) if step.pipeline is not None else {pipeline.site_for(name)}
    return found


def _known_sites(bus: Bus) -> set[str]:
    """The sites a step may run on: the configured ones, and the members of this bus's federation."""
    known = set(bus.site_specs())
    member = bus.federation
    if member is not None:
        fed = member.federation
        known.update(name for site in fed.sites for name in fed.names_of(site))
    return known


def _check_sites(bus: Bus, pipeline: Pipeline) -> None:
    """Refuse, before anything is on the bus, a pipeline whose steps run on a site nobody configured.

    ``lwfm-bus run`` says it at the line of the file first (``load_pipeline(sites=...)``);
    this is the same check for a pipeline run from Python.
    """
    known = _known_sites(bus)
    unknown = sorted(_sites(pipeline) - known)
    if unknown:
        listed = ", ".join(sorted(known))
        issues = [
            PipelineIssue(f"unknown site {site!r} (configured: {listed}; see {bus.config.sites_path()})")
            for site in unknown
        ]
        raise PipelineError(issues=issues)


async def _site_places(bus: Bus, pipeline: Pipeline) -> dict[str, tuple[str, bool]]:
    """Each site the pipeline uses: the interpreter with lwfm-bus there, and whether it is another machine.

    The step runner runs under that interpreter (``python -m lwfm_bus step-exec``): ours
    here, the adapter's elsewhere (its ``python`` attribute, the ssh and slurm sites'
    option of that name).  An adapter says it runs jobs on another machine with a
    ``remote`` attribute (ssh, and slurm over ssh); a step there starts in its job
    directory with a home of its own.  Another member of the federation, not configured
    here, gets ``python3`` and is another machine.
    """
    out = {}
    for site in _sites(pipeline):
        if bus.is_local_site(site):
            out[site] = (sys.executable, False)
            continue
        if site not in bus.site_specs():
            out[site] = ("python3", True)
            continue
        adapter = await bus.site(site)
        configured = getattr(adapter, "python", None)
        remote = getattr(adapter, "remote", False)
        out[site] = (configured if isinstance(configured, str) else "python3", remote is True)
    return out


def _workspaces(pipeline: Pipeline) -> dict[str, str]:
    """Every workspace the pipeline and its nested files declare, with the site it is made on."""
    found = {pipeline.workspace: pipeline.site} if pipeline.workspace else {}
    for name, step in pipeline.steps.items():
        if step.pipeline is not None:
            found.update(_workspaces(pipeline.nested(name)))
    return found


async def _ensure_workspaces(bus: Bus, pipeline: Pipeline, echo: Echo) -> None:
    """A pipeline's own workspace is made for it on first use, under ``<home>/workspaces`` here.

    Each nested file names its own (validation refuses one that names or refers to an
    ancestor's), so a nested pipeline never writes into its parent's workspace.
    """
    for name, site in _workspaces(pipeline).items():
        with contextlib.suppress(WorkspaceError):
            await bus.workspaces.get(name)
            continue
        if not bus.is_local_site(site):
            echo(f"workspace {name!r} is not defined for site {site!r}: define it (lwfm-bus workspace define)")
            continue
        root = bus.config.home / "workspaces" / name
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        await bus.workspaces.define(name, {site: str(root)})


async def _retire_standing(bus: Bus, pipeline: Pipeline, echo: Echo) -> None:
    """A new run replaces the per-arrival triggers an earlier run of this pipeline left standing.

    Otherwise every run would add one more, and one arrival would start a job per run.
    """
    prefix = f"{pipeline.name}:"
    for record in await bus.triggers(state="active"):
        d = record.definition
        if isinstance(d, DataTrigger) and d.fire == "each" and (d.downstream.job.name or "").startswith(prefix):
            with contextlib.suppress(LwfmBusError):
                await bus.cancel_trigger(record.trigger_id, reason="replaced by a new run of the pipeline")
                echo(f"withdrew {record.trigger_id} of an earlier run ({record.workflow_id}): this run replaces it")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 job``, ``2 jobs``: the count and the noun that goes with it."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


async def _stderr_tail(bus: Bus, job_id: str) -> list[str]:
    """The last lines (up to 3, non-blank, each cut to a readable width) of a job's stderr.

    If it cannot be read now (a remote site this process cannot reach, or slow to), one
    line says why and how to read it later: a failed step's line alone ("FAILED (exit 1)")
    left the user guessing.  Never more than ``_TAIL_WAIT_S``: the run's progress waits.
    """
    later = f"read it later with: lwfm-bus logs {job_id} --stderr"
    try:
        with anyio.fail_after(_TAIL_WAIT_S):
            data = await bus.logs(job_id, "stderr")
    except TimeoutError:
        return [f"(its stderr was not read within {_TAIL_WAIT_S:g}s; {later})"]
    except (LwfmBusError, OSError) as exc:
        why = " ".join(str(exc).split()) or "unreadable"  # one line, whatever the site said
        return [_cut(f"(its stderr cannot be read now: {why}; {later})")]
    lines = [line.rstrip() for line in data[-_TAIL_BYTES:].decode(errors="replace").splitlines() if line.strip()]
    return [_cut(line) for line in lines[-_TAIL_LINES:]]


def _cut(line: str) -> str:
    return line if len(line) <= _TAIL_WIDTH else line[: _TAIL_WIDTH - 3] + "..."


async def _check_resume(bus: Bus, pipeline: Pipeline, workflow_id: str) -> None:
    """Refuse to resume a workflow that is not a run of ``pipeline``, saying what it is.

    A run is the workflow ``run_pipeline`` defines: named after its pipeline, with the
    pipeline's file among its properties.
    """
    record = await bus.workflow(workflow_id)
    if record is not None and "pipeline" in record.properties:
        if record.name == pipeline.name:
            return
        raise LwfmBusError(f"{workflow_id!r} is a run of pipeline {record.name!r}, not of {pipeline.name!r}")
    jobs = await bus.jobs(workflow=workflow_id, limit=None)
    if record is None and not jobs:
        raise LwfmBusError(f"no workflow {workflow_id!r} is known")
    raise LwfmBusError(f"{workflow_id!r} is not a pipeline run (a workflow with {plural(len(jobs), 'job')})")


async def run_pipeline(
    bus: Bus,
    pipeline: Pipeline,
    echo: Echo = print,
    *,
    resume: str | None = None,
    started: Callable[[str], None] | None = None,
    overrides: list[str] | None = None,
) -> RunReport:
    """Compile ``pipeline`` onto the bus, follow it, and report how it ended.

    ``resume`` continues an earlier run (its workflow id) instead of starting a new one:
    its jobs have the same ids, so what already ran or still runs is not started again,
    and its triggers are the same triggers.  A workflow that is not a run of this
    pipeline is refused (:class:`LwfmBusError`, saying what it is).  A step on a site
    that is neither configured nor a member of this bus's federation is refused
    (:class:`PipelineError`).  Both before anything is published.  ``started`` is told
    the run's workflow id as soon as it is defined (what to resume after an interruption).
    ``overrides`` are the ``--set`` texts the pipeline was loaded with, kept in the run's
    workflow properties (``"overrides"``) so that a resume can apply them again.
    """
    _check_sites(bus, pipeline)
    if resume is not None:
        await _check_resume(bus, pipeline, resume)
    await _ensure_workspaces(bus, pipeline, echo)
    if resume is None:
        await _retire_standing(bus, pipeline, echo)
    # The run's '--set NAME=VALUE' texts, as given: what a resume (the CLI's, the dashboard's) passes again.
    wf = await bus.define_workflow(
        pipeline.name, {"pipeline": str(pipeline.source or ""), "overrides": list(overrides or [])}, workflow_id=resume
    )
    if started is not None:
        started(wf.workflow_id)

    async def finder(query: DataQuery) -> list[DataRecord]:
        records: list[DataRecord] = []
        page = await bus.find(query)
        records += page.records
        while page.next_offset is not None:
            page = await bus.find(query.model_copy(update={"offset": page.next_offset}))
            records += page.records
        return records

    places = await _site_places(bus, pipeline)

    def python(site: str) -> str:
        return places.get(site, ("python3", True))[0]

    def here(site: str) -> bool:
        return not places.get(site, ("python3", True))[1]

    plan = await compile_plan(pipeline, wf.workflow_id, finder, python=python, home=bus.config.home, local=here)
    if resume is not None:  # what failed or was cancelled runs again, as its next attempt
        jobs = _logical_states(await bus.jobs(workflow=wf.workflow_id, limit=None))
        triggers = {r.trigger_id: r.state for r in await bus.triggers(workflow=wf.workflow_id)}
        plan = run_again(plan, jobs, triggers, _trigger_of)
    follower = _Follower(plan, echo, functools.partial(_stderr_tail, bus))
    roots = [j for j in plan.jobs if isinstance(j.start, Root)]
    later = len(plan.jobs) - len(roots)
    how = f"{len(roots)} now, {later} by trigger" if later else "all now"
    echo(f"run {wf.workflow_id} of {pipeline.name}: {plural(len(plan.jobs), 'job')} ({how})")
    async with bus.subscribe(workflow_filter(wf.workflow_id), from_start=True) as events:
        for job in plan.jobs:
            if not isinstance(job.start, Root):
                await bus.add_trigger(_trigger_for(job, wf.workflow_id))
        notifying: list[Trigger] = []
        if pipeline.notify is not None:  # before any job starts: its first failure is heard
            finals = [j for ids in plan.finals.values() for j in ids]
            notifying = notify_triggers(pipeline.notify, wf.workflow_id, pipeline.name, finals, sys.executable)
            for trigger in notifying:
                await bus.add_trigger(trigger)
        for job in roots:
            await bus.submit(job.defn, site=job.site, workflow=wf.workflow_id, job_id=job.job_id)
        failed_at: float | None = None
        withdrawn: set[str] = set()  # after a failure: triggers to hear settle before exiting
        settled: set[str] = set()
        async for event in events:
            if isinstance(event, JobStatusEvent):
                await follower.on_job(event)
            elif isinstance(event, TriggerFailedEvent):
                follower.on_trigger_failed(event.data.trigger_id, event.data.reason)
            if isinstance(event, _SETTLED):
                settled.add(event.data.trigger_id)
            if follower.failures and failed_at is None:
                failed_at = time.monotonic()
                withdrawn = await _withdraw(bus, follower, "an earlier step of this run failed")
            if failed_at is not None and not follower.active and withdrawn <= settled:
                break  # nothing of this run runs, and nothing can start any more
            if failed_at is None and follower.done and not follower.active:
                break  # a loop's gate may complete while its last iteration's job is still exiting
    follower.flush()
    ok = not follower.failures
    for trigger in notifying:  # the run has ended: the notification it did not end with is no longer due
        if isinstance(trigger, WorkflowTrigger) == ok:
            with contextlib.suppress(LwfmBusError):
                await bus.cancel_trigger(trigger.trigger_id, reason="the run ended otherwise")
    if ok:
        await _withdraw(bus, follower, "the run is complete", keep=set(plan.standing))  # unneeded loop iterations
        for job in plan.jobs:
            if job.step in plan.standing:
                echo(f"{job.name} keeps running once per matching data: trigger {_trigger_id(job)} "
                     f"(stop it with: lwfm-bus trigger rm {_trigger_id(job)})")  # fmt: skip
    return follower.report(ok)


def _logical_states(records: Iterable[JobRecord]) -> dict[str, JobState]:
    """Each job's state as a resume sees it: a job retried by its policy is in its latest attempt's state.

    An end that is being retried is no end (the next attempt is on its way): such a job
    is neither spent nor run again by the resume.
    """
    latest: dict[str, tuple[int, JobState]] = {}
    for r in records:
        state = JobState.PENDING if r.retry_next is not None else r.state
        if r.logical_id not in latest or r.attempt >= latest[r.logical_id][0]:
            latest[r.logical_id] = (r.attempt, state)
    return {job_id: state for job_id, (_, state) in latest.items()}


async def _withdraw(bus: Bus, follower: _Follower, reason: str, keep: set[str] | None = None) -> set[str]:
    """Cancel the triggers that have not started their job; the ids of those cancelled.

    A trigger may fire while it is being cancelled: its Fired (or Cancelled) event says
    which, and the caller waits for it, so a job started at the last moment is followed.
    """
    cancelled = set()
    for trigger_id, job in follower.triggers.items():
        if job.job_id in follower.state or job.step in (keep or ()):
            continue  # fired, or meant to stay
        # Not indexed yet, or already settled: either way it can no longer start anything of ours.
        with contextlib.suppress(LwfmBusError):
            await bus.cancel_trigger(trigger_id, reason=reason)
            cancelled.add(trigger_id)
    return cancelled
