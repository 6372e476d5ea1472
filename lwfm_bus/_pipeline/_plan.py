"""From a validated pipeline to jobs and triggers: the compiler of ``lwfm-bus run``.

Nothing here schedules.  Every run of every step becomes one job with an id fixed in
advance, and how it starts becomes a trigger the engine judges like any other: a job
trigger (after one job), a join (after several), or a data-flow trigger (when data
with given metadata appears).  Only the jobs with no condition are submitted by the
runner itself.  So a pipeline is as durable as the bus: the runner may die, and the
engine still starts every step whose condition is met.

How the scenarios map:

* fan-out (``parallel``, ``for_each``, ``product``): one *unit* per run, expanded here
  (globs are matched and queries asked once, at compile time);
* ``sequence: N``: a chain of N jobs, each after the previous one;
* ``until`` (a loop): iteration *k+1* is started by a data-flow trigger on the marker
  that iteration *k*'s step runner notates when the condition does not hold yet
  (``lwfm_loop: again``); a *gate* job, started by the marker ``lwfm_loop: done``,
  stands for the finished loop, so later steps can join on it like on any job;
* ``on_data`` (once): a gate job started by a data-flow trigger, joined like a job;
  ``on_data`` each: a per-arrival data-flow trigger that stays registered;
* ``after``: every unit's first job joins the *finals* of the steps named;
* nesting: the nested file is compiled in place under the step's path; its root steps
  join what the nesting step waits for, and the step's finals are the nested ones.

Each run goes through the step runner (``lwfm-bus step-exec``, :mod:`._stepexec`),
which records the run's outputs under a key of its inputs -- that is what makes a
rerun skip work whose outputs are already recorded -- and judges loop conditions.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import PipelineError, PipelineIssue
from .._jobs import JobDefn
from .._query import DataQuery, DataRecord
from ._model import Pipeline, Step
from ._names import gate_job_name, job_name
from ._sources import GlobSource, ListSource, QuerySource, Source, UntilExitCode, UntilExpr, UntilFile, UntilMetadata
from ._stepspec import StepSpec, UntilSpec

__all__ = ["AfterJobs", "OnData", "Plan", "PlannedJob", "Root", "compile_plan"]

Finder = Callable[[DataQuery], Awaitable[list[DataRecord]]]


@dataclass(frozen=True)
class Root:
    """Submitted by the runner: nothing to wait for."""


@dataclass(frozen=True)
class AfterJobs:
    """Started when every listed job has completed (one: a job trigger; several: a join)."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class OnData:
    """Started by data whose metadata matches ``signature`` (once, or per arrival)."""

    signature: Mapping[str, Any]
    site: str | None = None
    each: bool = False
    existing: str = "include"
    workflow: bool = False  # only data of this run's workflow (the loop markers)


Start = Root | AfterJobs | OnData


@dataclass(frozen=True)
class PlannedJob:
    job_id: str
    name: str  # "<pipeline>:<step path>[<label>]@<iteration>", which progress and graphs parse
    step: str  # the step path: "count/count" inside the nested pipeline of step "count"
    site: str
    defn: JobDefn
    start: Start
    optional: bool = False  # a later loop iteration: runs only if the loop goes on


@dataclass
class Plan:
    name: str
    workflow_id: str
    jobs: list[PlannedJob] = field(default_factory=list)
    finals: dict[str, list[str]] = field(default_factory=dict)  # step path -> jobs whose COMPLETE ends a unit
    standing: list[str] = field(default_factory=list)  # per-arrival steps: their trigger stays registered
    loops: list[tuple[str, ...]] = field(default_factory=list)  # each loop's iterations in order, then its gate


@dataclass
class _Scope:
    """One pipeline file being compiled (the top one, or a nested one in place)."""

    pipeline: Pipeline
    prefix: str  # "" or "count/" for the nested pipeline of step count
    label: str  # fan-out label of the nesting run ("" at the top)
    values: dict[str, Any]  # params.*, pipeline.inputs.*
    entry: tuple[str, ...]  # jobs the root steps of this file wait for
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # step -> output -> value
    finals: dict[str, list[str]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.pipeline.source.parent if self.pipeline.source else Path.cwd()


class _Compiler:
    def __init__(
        self, plan: Plan, finder: Finder, python: Callable[[str], str], home: Path | None, local: Callable[[str], bool]
    ) -> None:
        self.plan = plan
        self.local = local
        self.finder = finder
        self.python = python
        self.home = home

    def _id(self, *parts: object) -> str:
        text = "\x1f".join(str(p) for p in (self.plan.workflow_id, *parts))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    async def scope(self, scope: _Scope) -> None:
        for name in scope.pipeline.order():
            await self.step(scope, name, scope.pipeline.steps[name])

    async def step(self, scope: _Scope, name: str, step: Step) -> None:
        path = scope.prefix + name
        deps = list(scope.entry) if not step.after else [j for a in step.after for j in scope.finals[a]]
        for a in step.after:
            if scope.prefix + a in self.plan.standing:
                raise PipelineError(
                    issues=[_issue(scope, name, f"step {a!r} runs once per arriving data and is never done: "
                                   "a step after it would wait forever")]
                )  # fmt: skip
        if step.pipeline is not None and step.repeat != "once":
            raise PipelineError(
                issues=[_issue(scope, name, "a nested pipeline runs once per run of its step: 'sequence' and "
                               "'until' are for commands (put them on the nested file's own steps)")]
            )  # fmt: skip
        if step.after and not deps:
            raise PipelineError(
                issues=[_issue(scope, name, f"nothing in {list(step.after)} ever completes (every step there runs "
                               "per arriving data): this step would never have anything to wait for")]
            )  # fmt: skip
        site = scope.pipeline.site_for(name) if step.pipeline is None else scope.pipeline.site
        if step.on_data is not None and step.on_data.fire == "once":
            gate = self._gate(path, scope.label, "data", site, OnData(dict(step.on_data.where), step.on_data.site,
                                                                        existing=step.on_data.existing))  # fmt: skip
            deps.append(gate)
        finals: list[str] = []
        runs = await self._runs(scope, name, step)
        for label, extras in runs:
            run_label = ".".join(x for x in (scope.label, label) if x)
            if step.pipeline is not None:
                finals += await self._nested(scope, name, step, run_label, extras, deps)
            else:
                finals += self._unit(scope, name, step, path, run_label, extras, deps, site)
        if step.fan_out == "on_data":
            self.plan.standing.append(path)
            finals = []  # never "done": it runs once per arrival for as long as its trigger stays
        scope.finals[name] = finals
        if step.fan_out != "on_data":
            self.plan.finals.setdefault(path, []).extend(finals)
        if step.pipeline is None:  # a nested step's outputs were set by _nested
            # Outputs later steps may name: single-run steps only (validation guarantees the rest).
            try:
                scope.outputs[name] = self._render_outputs(scope, step, {})
            except PipelineError:
                scope.outputs[name] = {}

    # ------------------------------------------------------------------ runs of a step

    async def _runs(self, scope: _Scope, name: str, step: Step) -> list[tuple[str, dict[str, Any]]]:
        if step.parallel is not None:
            return [(str(i), {"index": i}) for i in range(step.parallel)]
        if step.for_each is not None:
            items = await self._items(scope, name, step, step.for_each, "item")
            return [(str(i), values) for i, values in enumerate(items)]
        if step.product is not None:
            axes = [await self._items(scope, name, step, src, f"item.{axis}") for axis, src in step.product.items()]
            combos = list(itertools.product(*axes))
            return [(str(i), {k: v for part in combo for k, v in part.items()}) for i, combo in enumerate(combos)]
        if step.fan_out == "on_data":
            if step.repeat != "once" or step.after or step.pipeline is not None:
                raise PipelineError(
                    issues=[_issue(scope, name, "a step run per arriving data (on_data fire: each) cannot also have "
                                   "after, sequence, until or a nested pipeline in 'lwfm-bus run'")]
                )  # fmt: skip
            # The item is known only when data arrives: the step runner fills these slots in.
            return [("", {ref: item_slot(ref) for ref in _item_refs(step)})]
        return [("", {})]

    async def _items(self, scope: _Scope, name: str, step: Step, source: Source, key: str) -> list[dict[str, Any]]:
        if isinstance(source, ListSource):
            return [{key: v} for v in source.values]
        if isinstance(source, GlobSource):
            cwd = self._cwd(scope, step, {})
            pattern = source.glob.render(scope.values)
            found = sorted(globlib.glob(pattern, root_dir=cwd, recursive=True))
            if not found:
                raise PipelineError(issues=[_issue(scope, name, f"for_each glob {pattern!r} matches nothing in {cwd}")])
            return [{key: f} for f in found]
        assert isinstance(source, QuerySource)
        records = await self.finder(source.query)
        if not records:
            raise PipelineError(issues=[_issue(scope, name, "for_each query finds no data")])
        out = []
        for r in records:
            item: dict[str, Any] = {
                key: r.location,
                f"{key}.location": r.location,
                f"{key}.site": r.site,
                f"{key}.data_id": r.data_id,
            }
            item.update({f"{key}.meta.{k}": v for k, v in r.metadata.items() if isinstance(v, str | int | float)})
            out.append(item)
        return out

    # ------------------------------------------------------------------ one unit

    def _values(self, scope: _Scope, extras: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(scope.values)
        for step, outs in scope.outputs.items():
            values.update({f"steps.{step}.outputs.{o}": v for o, v in outs.items()})
        values.update(extras)
        return values

    def _render_outputs(self, scope: _Scope, step: Step, extras: Mapping[str, Any]) -> dict[str, str]:
        values = self._values(scope, extras)
        inputs = {k: t.render(values) for k, t in step.inputs.items()}
        values.update({f"inputs.{k}": v for k, v in inputs.items()})
        cwd = Path(self._cwd(scope, step, extras))
        return {k: _absolute(t.render(values), cwd) for k, t in step.outputs.items()}

    def _cwd(self, scope: _Scope, step: Step, extras: Mapping[str, Any]) -> str:
        return _cwd_of(scope, step, self._values(scope, extras))

    def _unit(
        self,
        scope: _Scope,
        name: str,
        step: Step,
        path: str,
        label: str,
        extras: dict[str, Any],
        deps: list[str],
        site: str,
    ) -> list[str]:
        pipeline = scope.pipeline
        unit = self._id("unit", path, label)
        count = step.sequence or step.max_iterations or 1
        previous: str | None = None
        ids: list[str] = []
        for k in range(count):
            values = self._values(scope, {**extras, **({"iteration": k} if step.repeat != "once" else {})})
            inputs = {key: t.render(values) for key, t in step.inputs.items()}
            values.update({f"inputs.{key}": v for key, v in inputs.items()})
            here = self.local(site)
            # A step on another machine starts where its site puts it (its job directory) unless
            # its ``cwd`` says otherwise, as written: this machine's directories mean nothing there.
            cwd = _cwd_of(scope, step, values) if here else (step.cwd.render(values) if step.cwd else None)
            # Outputs are absolute from here on: they may be read from another file's directory.
            # A remote step's stay as written: its runner resolves them where it runs.
            outputs = {
                key: _absolute(t.render(values), Path(cwd)) if here and cwd else t.render(values)
                for key, t in step.outputs.items()
            }
            values.update({f"outputs.{key}": v for key, v in outputs.items()})
            assert step.run is not None
            argv = [t.render(values) for t in step.run]
            env = {key: t.render(values) for key, t in step.env.items()}
            reqs = pipeline.requirements_for(name)
            py = self.python(site)
            if reqs:
                home = ["--home", str(self.home)] if self.home and here else []  # a remote job has its own
                argv = [py, "-m", "lwfm_bus", *home, "env", "exec", *(a for r in reqs for a in ("-r", r)), "--", *argv]
            spec = StepSpec(
                pipeline=self.plan.name,
                step=path,
                unit=unit,
                label=label,
                run=self.plan.workflow_id,
                iteration=k if step.repeat != "once" else None,
                inputs=inputs,
                outputs=outputs,
                until=_until_spec(step, values) if step.until is not None else None,
                max_iterations=step.max_iterations,
                per_arrival=step.fan_out == "on_data",
                env_digest=_digest(env) if env else None,
            )
            wrapped = [
                py,
                "-m",
                "lwfm_bus",
                "step-exec",
                "--spec",
                spec.model_dump_json(exclude_none=True),
                "--",
                *argv,
            ]
            run_name = job_name(self.plan.name, path, label or None, k if step.repeat != "once" else None)
            defn = JobDefn(argv=tuple(wrapped), name=run_name, env=env, cwd=cwd, resources=step.resources,
                           retry=pipeline.retry_for(name))  # fmt: skip
            job_id = self._id("job", path, label, k)
            if step.fan_out == "on_data":
                assert step.on_data is not None
                start: Start = OnData(dict(step.on_data.where), step.on_data.site, each=True,
                                      existing=step.on_data.existing)  # fmt: skip
            elif k == 0:
                start = AfterJobs(tuple(deps)) if deps else Root()
            elif step.repeat == "sequence":
                assert previous is not None
                start = AfterJobs((previous,))
            else:  # until: iteration k runs when iteration k-1 said "again"
                start = OnData({"lwfm_unit": unit, "lwfm_iter": k - 1, "lwfm_loop": "again"}, workflow=True)
            self.plan.jobs.append(PlannedJob(job_id, run_name, path, site, defn, start, optional=k > 0 and
                                             step.repeat == "until"))  # fmt: skip
            ids.append(job_id)
            previous = job_id
        if step.repeat == "until":
            done = OnData({"lwfm_unit": unit, "lwfm_loop": "done"}, workflow=True)
            gate = self._gate(path, label, "loop", site, done)
            self.plan.loops.append((*ids, gate))
            return [gate]
        return [ids[-1]]

    def _gate(self, path: str, label: str, why: str, site: str, start: OnData) -> str:
        """A no-op job that stands for a condition on data, so joins can wait for it."""
        job_id = self._id("gate", why, path, label)
        name = gate_job_name(self.plan.name, path, label or None, why)
        defn = JobDefn(argv=(self.python(site), "-c", "pass"), name=name)
        self.plan.jobs.append(PlannedJob(job_id, name, path, site, defn, start))
        return job_id

    async def _nested(
        self, scope: _Scope, name: str, step: Step, label: str, extras: dict[str, Any], deps: list[str]
    ) -> list[str]:
        child = scope.pipeline.nested(name)
        values = self._values(scope, extras)
        given = {k: _crossing(t.render(values), scope.base_dir) for k, t in step.with_.items()}
        inputs: dict[str, Any] = {}
        for key, decl in child.inputs.items():
            if key in given:
                inputs[key] = given[key]
            elif decl.default is not None:
                inputs[key] = decl.default.render({f"params.{k}": v for k, v in child.params.items()})
        nested_values = {f"params.{k}": v for k, v in child.params.items()}
        nested_values.update({f"pipeline.inputs.{k}": v for k, v in inputs.items()})
        inner = _Scope(child, f"{scope.prefix}{name}/", label, nested_values, tuple(deps))
        await self.scope(inner)
        child_dir = inner.base_dir
        outs_values = self._values(inner, {})
        scope.outputs[name] = {k: _crossing(t.render(outs_values), child_dir) for k, t in child.outputs.items()}
        return [j for finals in inner.finals.values() for j in finals]


def _digest(env: Mapping[str, str]) -> str:
    """The step's environment enters the resume key as a digest: its values may be secrets."""
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()


def item_slot(ref: str) -> str:
    """A stand-in for ``{ref}`` that no user text contains (private-use code points)."""
    return f"\ue000{ref}\ue001"


def _item_refs(step: Step) -> set[str]:
    templates = [*(step.run or ()), *step.env.values(), *step.inputs.values(), *step.outputs.values()]
    return {ref for t in templates for ref in t.refs if ref == "item" or ref.startswith("item.")}


def _cwd_of(scope: _Scope, step: Step, values: Mapping[str, Any]) -> str:
    """The step's working directory: its ``cwd`` (relative to its file), else its file's directory."""
    return str(scope.base_dir / step.cwd.render(values)) if step.cwd else str(scope.base_dir)


def _absolute(path: str, cwd: Path) -> str:
    """A declared output as an absolute path (workspace references and URLs stay as they are)."""
    if not path or os.path.isabs(path) or path.startswith("workspace:") or "://" in path:
        return path
    return os.path.normpath(cwd / path)


def _crossing(value: str, base: Path) -> str:
    """A value crossing between two files: a relative path is made absolute against its own file's directory.

    A value is taken for a path when it has a slash or names something that exists;
    plain words and numbers cross unchanged.
    """
    if not value or os.path.isabs(value) or value.startswith("workspace:") or "://" in value:
        return value
    if "/" in value or (base / value).exists():
        return os.path.normpath(base / value)
    return value


def _until_spec(step: Step, values: Mapping[str, Any]) -> UntilSpec:
    until = step.until
    if isinstance(until, UntilExitCode):
        return UntilSpec(kind="exit_code", exit_code=until.exit_code)
    if isinstance(until, UntilFile):
        return UntilSpec(kind="file", file=until.file.render(values))
    if isinstance(until, UntilMetadata):
        return UntilSpec(kind="metadata", where=dict(until.metadata.where), site=until.metadata.site)
    assert isinstance(until, UntilExpr)
    return UntilSpec(kind="expr", expr=until.expr.text)


def _issue(scope: _Scope, step: str, message: str) -> PipelineIssue:
    return PipelineIssue(message, ("steps", step), file=str(scope.pipeline.source) if scope.pipeline.source else None)


def _default_python(site: str) -> str:
    return sys.executable


async def compile_plan(
    pipeline: Pipeline,
    workflow_id: str,
    finder: Finder,
    *,
    python: Callable[[str], str] = _default_python,
    home: Path | None = None,
    local: Callable[[str], bool] = lambda site: True,
) -> Plan:
    """Every job of one run of ``pipeline``, with how each starts.

    ``finder`` answers the pipeline's data queries (``for_each: {query: ...}``);
    ``python`` names the interpreter with lwfm-bus installed on a site (the step
    runner and environments run under it); ``local`` says whether a site runs jobs on
    this machine (a remote step gets no directory or home of this machine's).
    """
    plan = Plan(name=pipeline.name, workflow_id=workflow_id)
    values: dict[str, Any] = {f"params.{k}": v for k, v in pipeline.params.items()}
    for key, decl in pipeline.inputs.items():
        if decl.default is None:
            raise PipelineError(
                issues=[PipelineIssue(f"input {key!r} has no default: run the pipeline that nests this one")]
            )
        values[f"pipeline.inputs.{key}"] = decl.default.render(values)
    await _Compiler(plan, finder, python, home, local).scope(_Scope(pipeline, "", "", values, ()))
    return plan
