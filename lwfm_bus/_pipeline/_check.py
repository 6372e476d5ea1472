"""Checks that span steps: the ``after`` graph and what every placeholder may refer to.

A placeholder is only accepted where its value will exist when the run starts:

* ``{params.P}`` and ``{pipeline.inputs.I}`` anywhere;
* ``{inputs.I}`` / ``{outputs.O}`` in the step's own command, env, cwd and until
  file (outputs may use inputs, inputs may use neither);
* ``{steps.S.outputs.O}`` only if S completes first (S is in ``after``, directly
  or through other steps), and only if that output is one value -- not a path that
  changes per run (``{item}``, ``{index}``, ``{iteration}``), which would leave the
  later step not knowing which run's output it means;
* ``{index}`` with ``parallel``; ``{iteration}`` with ``sequence``/``until``;
  ``{item...}`` with ``for_each``, ``product`` and ``on_data: {fire: each}``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .._errors import PipelineIssue
from ._sources import QUERY_ITEM_FIELDS, GlobSource, QuerySource, Source, UntilFile
from ._template import Template

if TYPE_CHECKING:
    from ._model import Pipeline, Step

__all__ = ["Scope", "ancestors", "pipeline_issues", "ref_issues", "templates", "topological_order"]

Path = tuple[str | int, ...]
_PER_RUN = frozenset({"index", "iteration", "item"})


@dataclass(frozen=True)
class Scope:
    """Where a template sits, and so which names it may use."""

    step: str | None
    """The step it belongs to (None: the pipeline's own outputs and input defaults)."""
    inputs: bool = False
    outputs: bool = False
    steps: frozenset[str] | None = None
    """Steps whose outputs may be used (None: every step)."""
    per_run: bool = False
    """Whether item/index/iteration may be used."""


def hint(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or the list of known names, for an error message."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if known and len(known) <= 12 else ""


def ancestors(p: Pipeline) -> dict[str, frozenset[str]]:
    """For each step, every step it runs after, transitively (unknown names ignored; safe with cycles)."""
    out: dict[str, frozenset[str]] = {}
    for name in p.steps:
        seen: set[str] = set()
        todo = [d for d in p.steps[name].after if d in p.steps]
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(d for d in p.steps[dep].after if d in p.steps)
        out[name] = frozenset(seen)
    return out


def find_cycle(p: Pipeline) -> list[str] | None:
    """One cycle of ``after`` edges as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in p.steps[name].after:
            if dep not in p.steps:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in p.steps:
        if name not in state and (found := visit(name)):
            return found
    return None


def topological_order(p: Pipeline) -> tuple[str, ...]:
    """Steps in an order that respects ``after``, keeping file order where it is free."""
    placed: list[str] = []
    done: set[str] = set()
    while len(placed) < len(p.steps):
        ready = next(n for n, s in p.steps.items() if n not in done and done.issuperset(s.after))
        placed.append(ready)
        done.add(ready)
    return tuple(placed)


def _sources(step: Step) -> Iterator[tuple[Path, Source]]:
    if step.for_each is not None:
        yield ("for_each",), step.for_each
    for axis, source in (step.product or {}).items():
        yield ("product", axis), source


def templates(p: Pipeline) -> Iterator[tuple[Path, Template, Scope]]:
    """Every template of the pipeline, with its field path and its scope."""
    anc = ancestors(p)
    for name, step in p.steps.items():
        base: Path = ("steps", name)
        full = Scope(name, inputs=True, outputs=True, steps=anc[name], per_run=True)
        bare = replace(full, inputs=False, outputs=False)
        for i, t in enumerate(step.run or ()):
            yield (*base, "run", i), t, full
        for key, t in step.env.items():
            yield (*base, "env", key), t, full
        if step.cwd is not None:
            yield (*base, "cwd"), step.cwd, full
        for key, t in step.inputs.items():
            yield (*base, "inputs", key), t, bare
        for key, t in step.outputs.items():
            yield (*base, "outputs", key), t, replace(full, outputs=False)
        for key, t in step.with_.items():
            yield (*base, "with", key), t, bare
        for path, source in _sources(step):
            if isinstance(source, GlobSource):
                yield (*base, *path, "glob"), source.glob, replace(bare, per_run=False)
        if isinstance(step.until, UntilFile):
            yield (*base, "until", "file"), step.until.file, full
    for key, t in p.outputs.items():
        yield ("outputs", key), t, Scope(None)
    for key, decl in p.inputs.items():
        if decl.default is not None:
            yield ("inputs", key, "default"), decl.default, Scope(None, steps=frozenset())


def _varies(t: Template, varying_inputs: set[str]) -> bool:
    for ref in t.refs:
        parts = ref.split(".")
        if parts[0] in _PER_RUN or (parts[0] == "inputs" and len(parts) > 1 and parts[1] in varying_inputs):
            return True
    return False


def per_run_outputs(step: Step) -> set[str]:
    """The step's outputs whose path differs from run to run."""
    vin = {k for k, t in step.inputs.items() if _varies(t, set())}
    return {k for k, t in step.outputs.items() if _varies(t, vin)}


def pipeline_issues(p: Pipeline) -> list[PipelineIssue]:
    """Every problem of the ``after`` graph and of the placeholders (nested outputs are the loader's)."""
    out: list[PipelineIssue] = []
    for name, step in p.steps.items():
        for i, dep in enumerate(step.after):
            if dep == name:
                out.append(PipelineIssue("a step cannot run after itself", ("steps", name, "after", i)))
            elif dep not in p.steps:
                out.append(PipelineIssue(f"no step {dep!r}{hint(dep, p.steps)}", ("steps", name, "after", i)))
    cycle = find_cycle(p)
    if cycle:
        out.append(PipelineIssue(f"the steps wait for each other: {' -> '.join(cycle)}", ("steps", cycle[0], "after")))
    out.extend(ref_issues(p, None))
    return out


def ref_issues(p: Pipeline, nested_outputs: Mapping[str, frozenset[str]] | None) -> list[PipelineIssue]:
    """Placeholders that name nothing.  With ``nested_outputs`` (step -> its nested pipeline's outputs), only
    references to nested steps' outputs are judged; without, those are skipped."""
    out = []
    for path, template, scope in templates(p):
        for ref in dict.fromkeys(template.refs):
            problem = _ref_problem(p, scope, ref.split("."), nested_outputs)
            if problem:
                out.append(PipelineIssue(f"{{{ref}}}: {problem}", path))
    return out


def _ref_problem(
    p: Pipeline, scope: Scope, parts: list[str], nested: Mapping[str, frozenset[str]] | None
) -> str | None:
    head, n = parts[0], len(parts)
    if nested is not None and head != "steps":
        return None
    step = p.steps[scope.step] if scope.step is not None else None
    if head == "params":
        if n == 2 and parts[1] in p.params:
            return None
        return f"no param {'.'.join(parts[1:])!r}{hint(parts[-1], p.params)}"
    if head == "pipeline":
        if n == 3 and parts[1] == "inputs" and parts[2] in p.inputs:
            return None
        return f"the pipeline declares no such input{hint(parts[-1], p.inputs)}"
    if head in ("inputs", "outputs"):
        allowed = scope.inputs if head == "inputs" else scope.outputs
        if step is None or not allowed:
            return f"{{{head}.*}} cannot be used here"
        names = step.inputs if head == "inputs" else step.outputs
        return (
            None if n == 2 and parts[1] in names else f"the step declares no such {head[:-1]}{hint(parts[-1], names)}"
        )
    if head == "steps":
        return _step_output_problem(p, scope, parts, nested)
    if head in _PER_RUN:
        if step is None or not scope.per_run:
            return f"{{{head}}} exists only in a step's command, env, cwd, inputs and outputs"
        return _per_run_problem(step, parts)
    return (
        "unknown placeholder: use params.*, pipeline.inputs.*, inputs.*, outputs.*, steps.*.outputs.*, "
        "item, index or iteration (and '{{' '}}' for literal braces)"
    )


def _step_output_problem(
    p: Pipeline, scope: Scope, parts: list[str], nested: Mapping[str, frozenset[str]] | None
) -> str | None:
    if len(parts) != 4 or parts[2] != "outputs":
        return "write {steps.STEP.outputs.NAME}"
    name, output = parts[1], parts[3]
    if name not in p.steps:
        return f"no step {name!r}{hint(name, p.steps)}"
    if name == scope.step:
        return f"a step's own outputs are {{outputs.{output}}}"
    if scope.steps is not None and name not in scope.steps:
        return f"this step does not run after {name!r}: add it to 'after'"
    target = p.steps[name]
    if target.pipeline is not None:
        if target.fan_out != "once" or target.repeat != "once":
            return f"step {name!r} runs its nested pipeline more than once, so its outputs are not one value"
        if nested is None or name not in nested:
            return None
        return None if output in nested[name] else f"{target.pipeline} declares no output{hint(output, nested[name])}"
    if nested is not None:
        return None
    if output not in target.outputs:
        return f"step {name!r} declares no such output{hint(output, target.outputs)}"
    if output in per_run_outputs(target):
        return f"output {output!r} of step {name!r} changes per run; use a directory all its runs write into"
    return None


def _per_run_problem(step: Step, parts: list[str]) -> str | None:
    head, rest = parts[0], parts[1:]
    if head == "index":
        return None if step.fan_out == "parallel" and not rest else "{index} exists only in steps with 'parallel'"
    if head == "iteration":
        return None if step.repeat != "once" and not rest else "{iteration} exists only with 'sequence' or 'until'"
    if step.fan_out == "product":
        assert step.product is not None
        if not rest:
            return "a product has one item per axis: write {item.AXIS}"
        if rest[0] not in step.product:
            return f"the product has no axis {rest[0]!r}{hint(rest[0], step.product)}"
        return _item_problem(isinstance(step.product[rest[0]], QuerySource), rest[1:])
    if step.fan_out == "for_each":
        return _item_problem(isinstance(step.for_each, QuerySource), rest)
    if step.fan_out == "on_data":
        return _item_problem(True, rest)
    return "{item} exists only in steps with for_each, product or on_data fire: each"


def _item_problem(is_data: bool, rest: list[str]) -> str | None:
    if not rest:
        return None
    if not is_data:
        return "a glob or list item is one value: write {item} (or {item.AXIS} in a product)"
    if (len(rest) == 1 and rest[0] in QUERY_ITEM_FIELDS) or (len(rest) == 2 and rest[0] == "meta"):
        return None
    return "a data item offers location, site, data_id and meta.KEY"
