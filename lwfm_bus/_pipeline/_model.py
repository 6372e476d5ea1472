"""The pipeline file format, as typed models: what a person writes, checked and resolved.

A pipeline is a named set of steps.  Each step runs a command (or a nested pipeline
file) after other steps and/or when matching data arrives, and says *how many runs*
it makes -- the eight step scenarios of the LAS notes:

====  ==========================================  =====================================
 #    scenario                                    keys
====  ==========================================  =====================================
 1    one command, once, one input                (none)
 2    N times at once                             ``parallel: N`` -> ``{index}``
 3    once for every input                        ``for_each:`` (or ``on_data.fire: each``) -> ``{item}``
 4    once, with several named inputs             ``inputs: {a: .., b: ..}``
 5    over combinations of inputs                 ``product: {a: .., b: ..}`` -> ``{item.a}``
 6    N times one after another                   ``sequence: N`` -> ``{iteration}``
 7    per input, N times in sequence              ``for_each`` + ``sequence``
 8    in a loop until a condition holds           ``until:`` + ``max_iterations``
====  ==========================================  =====================================

Relative paths (command words, inputs, outputs, globs, until files) are relative to
the step's working directory: by default the directory of the file that declares the
step.  A value that crosses into a nested pipeline (``with:``) or back out of it (its
``outputs``) is relative to the file it was written in; a runner makes it absolute (or
a workspace reference) as it crosses, since the two files may live in different
directories.

Every field has a description because the JSON Schema generated from these models is
what an editor offers as completion.  Checks that involve several steps (names in
``after``, cycles, placeholders) live in :mod:`._check`; the loader adds the ones that
need other files (nested pipelines) and maps every problem to a line of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .._errors import PipelineError, PipelineIssue
from .._jobs import Resources
from .._meta import MetaKey
from .._notify import Notify
from .._retry import RetryPolicy
from .._subjects import Token
from .._triggers import Schedule
from ._sources import MAX_RUNS, UNTIL_NAMES, OnData, Scalar, Source, Until, UntilExpr
from ._template import Template
from ._types import (
    MAX_STEPS,
    PARAM_REF,
    After,
    Command,
    Count,
    EnvName,
    Iterations,
    Name,
    NestedPath,
    Requirements,
    Text,
)

__all__ = ["FORMAT_VERSION", "InputDecl", "Pipeline", "Step"]

FORMAT_VERSION = 1
MAX_AXES = 8


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputDecl(_Model):
    """An input the pipeline expects from whoever runs it (a parent pipeline's ``with:``)."""

    description: Text | None = Field(default=None, description="What the input is, for people.")
    default: Template | None = Field(
        default=None, description="Value when none is supplied; without a default the input is required."
    )

    @property
    def required(self) -> bool:
        return self.default is None


class Step(_Model):
    """One step: what it runs, when, where, and how many runs it makes."""

    description: Text | None = Field(default=None, description="What the step does, for people.")
    run: Command | None = Field(
        default=None,
        description="The command: a list of words, or a string split into words like a shell would (but never run "
        "by one: no pipes, globs or $VARS). Placeholders such as {inputs.x} are filled in per run.",
    )
    pipeline: NestedPath | None = Field(
        default=None, description="Instead of run: a nested pipeline file (.yaml), relative to this file."
    )
    with_: dict[Name, Template] = Field(
        default_factory=dict,
        alias="with",
        description="Values for the nested pipeline's declared inputs (relative paths: relative to this file).",
    )
    site: Token | None = Field(default=None, description="Site to run on (default: the pipeline's site).")
    env: dict[EnvName, Template] = Field(
        default_factory=dict, max_length=256, description="Extra environment variables for the command."
    )
    cwd: Template | None = Field(
        default=None, description="Working directory on the site (default: the directory of the pipeline file)."
    )
    resources: Resources = Field(
        default_factory=Resources, description="Resource hints (nodes, tasks, memory_mb, time_limit_s, ...)."
    )
    requirements: Requirements = Field(
        default=(),
        description="Python requirements (PEP 508) added to the pipeline's for this step; several entries on one "
        "package narrow it together.",
    )
    retry: RetryPolicy | None = Field(
        default=None,
        description="Run a failed run again (default: the pipeline's retry), e.g. {max_attempts: 3, when: "
        "\"native_state in ('NODE_FAIL', 'PREEMPTED')\", grow: {OUT_OF_MEMORY: {memory_mb: 2}}}.",
    )
    inputs: dict[Name, Template] = Field(
        default_factory=dict, max_length=64, description="Named inputs of one run, used as {inputs.NAME}."
    )
    outputs: dict[Name, Template] = Field(
        default_factory=dict,
        max_length=64,
        description="Named outputs, used as {outputs.NAME} here and {steps.STEP.outputs.NAME} in later steps.",
    )
    after: After = Field(
        default=(), description="Step(s) that must complete first; with several, all of them (a join)."
    )
    on_data: OnData | None = Field(default=None, description="Run when data whose metadata matches arrives.")
    parallel: Count | None = Field(default=None, description="Scenario 2: N runs at once; {index} is 0..N-1.")
    for_each: Source | None = Field(default=None, description="Scenario 3: one run per input; {item} is the input.")
    product: dict[Name, Source] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_AXES,
        description="Scenario 5: one run per combination of the named sources; {item.NAME} is one value of each.",
    )
    sequence: Count | None = Field(
        default=None, description="Scenarios 6 and 7: N runs one after another; {iteration} is 0..N-1."
    )
    until: Until | None = Field(
        default=None, description="Scenario 8: run again until this holds; {iteration} counts from 0."
    )
    max_iterations: Iterations | None = Field(
        default=None, description="Required with until: the most runs the loop may make before it fails."
    )

    @model_validator(mode="after")
    def _check_step(self) -> Self:
        issues = _step_issues(self)
        if issues:
            raise PipelineError(issues=issues)
        return self

    @property
    def fan_out(self) -> Literal["once", "parallel", "for_each", "product", "on_data"]:
        """How the runs of one step spread out (at most one way)."""
        if self.parallel is not None:
            return "parallel"
        if self.for_each is not None:
            return "for_each"
        if self.product is not None:
            return "product"
        if self.on_data is not None and self.on_data.fire == "each":
            return "on_data"
        return "once"

    @property
    def repeat(self) -> Literal["once", "sequence", "until"]:
        """How each of those runs repeats."""
        return "sequence" if self.sequence is not None else "until" if self.until is not None else "once"

    @property
    def scenario(self) -> int:
        """The LAS step scenario (1-8) this step is."""
        fan, several = self.fan_out, len(self.inputs) > 1
        if self.repeat == "until":
            return 8
        if self.repeat == "sequence":
            return 7 if fan in ("for_each", "product", "on_data") or several else 6
        if fan == "product" or (fan == "parallel" and several):
            return 5
        return {"parallel": 2, "for_each": 3, "on_data": 3}.get(fan, 4 if several else 1)


def _step_issues(step: Step) -> list[PipelineIssue]:
    # Judged by value, not by which keys were written, so a dumped-and-reloaded step is judged the same.
    defaults = Step.model_construct()
    given = {k for k in Step.model_fields if getattr(step, k) != getattr(defaults, k, None)}
    out: list[PipelineIssue] = []

    def issue(path: tuple[str | int, ...], message: str) -> None:
        out.append(PipelineIssue(message, path))

    if step.run is None and step.pipeline is None:
        issue((), "a step needs 'run' (a command) or 'pipeline' (a nested pipeline file)")
    if step.run is not None and step.pipeline is not None:
        issue(("pipeline",), "'run' and 'pipeline' exclude each other: a step runs a command or a nested pipeline")
    if step.pipeline is not None:
        for key in ("site", "env", "cwd", "resources", "requirements", "inputs", "outputs"):
            if key in given:
                issue((key,), f"'{key}' is not allowed with 'pipeline': the nested file declares its own")
    elif "with_" in given:
        issue(("with",), "'with' supplies a nested pipeline's inputs: it needs 'pipeline'")
    fans = [k for k in ("parallel", "for_each", "product") if getattr(step, k) is not None]
    if step.on_data is not None and step.on_data.fire == "each":
        fans.append("on_data")
    for extra in fans[1:]:
        issue((extra,), f"'{fans[0]}' and '{extra}' exclude each other: a step fans out one way")
    if step.until is not None and step.sequence is not None:
        issue(("until",), "'sequence' and 'until' exclude each other: a fixed count or a condition")
    if step.until is not None and step.max_iterations is None:
        issue(("until",), "'until' needs 'max_iterations', the most runs the loop may make")
    if isinstance(step.until, UntilExpr):
        for name in sorted(step.until.expr.names - UNTIL_NAMES):
            known = ", ".join(sorted(UNTIL_NAMES))
            issue(("until", "expr"), f"unknown name {name!r}: an until expression can use {known}")
    if step.max_iterations is not None and step.until is None:
        issue(("max_iterations",), "'max_iterations' bounds an 'until' loop; this step has none")
    seen: set[str] = set()
    for i, name in enumerate(step.after):
        if name in seen:
            issue(("after", i), f"step {name!r} is listed twice")
        seen.add(name)
    if step.product is not None:
        runs = 1
        for source in step.product.values():
            runs *= source.size() or 1
        if runs > MAX_RUNS:
            issue(("product",), f"{runs} combinations: more than the {MAX_RUNS} runs a step may make")
    return out


class Pipeline(_Model):
    """A pipeline file: steps in drawing order, their defaults, and what a parent passes in and gets back."""

    pipeline: Literal[1] = Field(description="Version of this file format: 1.")
    name: Token = Field(description="The pipeline's name (letters, digits and _-:@+=~^).")
    description: Text | None = Field(default=None, description="What the pipeline does, for people.")
    params: dict[MetaKey, Scalar] = Field(
        default_factory=dict,
        max_length=128,
        description="Parameters with their defaults, used as {params.NAME}; `lwfm-bus ... --set NAME=VALUE` "
        "changes them.",
    )
    site: Token = Field(default="local", description="Default site of the steps.")
    workspace: Token | None = Field(
        default=None,
        description="The pipeline's own workspace. A nested pipeline gets its own and cannot use its parent's.",
    )
    requirements: Requirements = Field(
        default=(), description="Python requirements (PEP 508) of every step; a step's own are added to these."
    )
    retry: RetryPolicy | None = Field(
        default=None, description="Every step's retry policy, unless the step has its own (see a step's retry)."
    )
    notify: Notify | None = Field(
        default=None,
        description="POST the run's end as JSON to a webhook, once: {url: https://... or secret:NAME, on: failure "
        "| success | end}. Read from the file run only (a nested pipeline's is refused).",
    )
    inputs: dict[Name, InputDecl] = Field(
        default_factory=dict,
        max_length=64,
        description="Inputs a parent pipeline supplies with `with:`, used as {pipeline.inputs.NAME}.",
    )
    outputs: dict[Name, Template] = Field(
        default_factory=dict,
        max_length=64,
        description="Outputs a parent pipeline can use as {steps.STEP.outputs.NAME}, e.g. "
        "'{steps.count.outputs.table}' (relative paths: relative to this file).",
    )
    steps: dict[Name, Step] = Field(
        min_length=1, max_length=MAX_STEPS, description="The steps by name, in the order they are drawn."
    )
    schedule: Schedule | None = Field(
        default=None,
        description="Run the whole pipeline at each tick, a new run per tick: `lwfm-bus run` registers the "
        "schedule and returns, e.g. {cron: '0 * * * *', tz: Europe/Paris} or {interval_s: 3600}; start, end, "
        "catchup as for a schedule trigger. Read from the file run only (a nested pipeline's is refused).",
    )

    _source: Path | None = PrivateAttr(default=None)
    _nested: dict[str, Pipeline] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _resolve_counts(cls, data: Any) -> Any:
        """Counts may be ``{params.n}``: replace the ones naming a known param by its value."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
            return data
        params = data["params"] if isinstance(data.get("params"), dict) else {}
        steps = {}
        for name, step in data["steps"].items():
            if isinstance(step, dict):
                step = dict(step)
                for key in ("parallel", "sequence", "max_iterations"):
                    m = PARAM_REF.fullmatch(step[key].strip()) if isinstance(step.get(key), str) else None
                    if m and m[1] in params:
                        step[key] = params[m[1]]
            steps[name] = step
        return {**data, "steps": steps}

    @model_validator(mode="after")
    def _check_pipeline(self) -> Self:
        from ._check import pipeline_issues

        issues = pipeline_issues(self)
        if issues:
            raise PipelineError(issues=issues)
        return self

    @property
    def source(self) -> Path | None:
        """The file this pipeline was loaded from (None if built in Python)."""
        return self._source

    def nested(self, step: str) -> Pipeline:
        """The loaded pipeline of a ``pipeline:`` step (loaded by :func:`load_pipeline`)."""
        if self.steps[step].pipeline is None:
            raise KeyError(f"step {step!r} runs a command, not a nested pipeline")
        if step not in self._nested:
            raise KeyError(f"the nested pipeline of step {step!r} was not loaded (use load_pipeline)")
        return self._nested[step]

    def site_for(self, step: str) -> str:
        """The site a step runs on."""
        return self.steps[step].site or self.site

    def retry_for(self, step: str) -> RetryPolicy | None:
        """A step's retry policy: its own, else the pipeline's."""
        return self.steps[step].retry or self.retry

    def requirements_for(self, step: str) -> tuple[str, ...]:
        """The pipeline's requirements followed by the step's own (an environment builder merges them)."""
        return (*self.requirements, *self.steps[step].requirements)

    def ancestors(self, step: str) -> frozenset[str]:
        """Every step that must complete before ``step`` starts (``after``, transitively)."""
        from ._check import ancestors

        return ancestors(self)[step]

    def order(self) -> tuple[str, ...]:
        """The step names in an order that respects ``after`` (file order among independent steps)."""
        from ._check import topological_order

        return topological_order(self)
