"""The declarative pipeline file: examples that validate and really run, errors that point at the right place,
nesting rules, the safe expression language, templates, and ``lwfm-bus validate``."""

from __future__ import annotations

import ast
import builtins
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lwfm_bus._cli import main
from lwfm_bus._errors import PipelineError, PipelineIssue
from lwfm_bus._pipeline import (
    MAX_FILE_BYTES,
    ExprError,
    GlobSource,
    ListSource,
    Pipeline,
    QuerySource,
    Step,
    Template,
    TemplateError,
    UntilExitCode,
    UntilExpr,
    UntilFile,
    compile_expr,
    load_pipeline,
    parse_override,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def issues(path: Path, overrides: dict[str, Any] | None = None) -> list[PipelineIssue]:
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path, overrides)
    assert isinstance(caught.value, ValueError)
    return caught.value.issues


def at(found: list[PipelineIssue], field: str) -> PipelineIssue:
    """The one issue about ``field``."""
    matching = [i for i in found if i.field == field]
    assert len(matching) == 1, f"expected one issue at {field!r}, got: {[str(i) for i in found]}"
    return matching[0]


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_validates_and_matches_the_json_schema(path: Path) -> None:
    pipeline = load_pipeline(path)
    assert pipeline.source == path.resolve()
    again = Pipeline.model_validate_json(pipeline.model_dump_json(by_alias=True))  # e.g. carried in an event
    assert again.model_dump() == pipeline.model_dump() and again.source is None
    schema = json.loads((ROOT / "schemas/files/pipeline.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


def test_the_examples_cover_all_eight_scenarios_and_nesting() -> None:
    top = [p for p in EXAMPLE_FILES if p.parent == EXAMPLES]
    scenarios = {step.scenario for p in top for step in load_pipeline(p).steps.values()}
    assert scenarios == set(range(1, 9))
    nested = load_pipeline(EXAMPLES / "09-nested.yaml")
    assert nested.nested("count").name == "count-words-in"
    assert set(nested.nested("count").outputs) == {"counts"}


def _per_run_values(step: Step, cwd: Path) -> list[dict[str, Any]]:
    def values(source: Any) -> list[Any]:
        if isinstance(source, ListSource):
            return list(source.values)
        assert isinstance(source, GlobSource)
        return sorted(str(p.relative_to(cwd)) for p in cwd.glob(source.glob.render({})))

    if step.parallel is not None:
        return [{"index": i} for i in range(step.parallel)]
    if step.for_each is not None:
        return [{"item": v} for v in values(step.for_each)]
    if step.product is not None:
        axes = list(step.product)
        combos = itertools.product(*(values(step.product[a]) for a in axes))
        return [{"item": dict(zip(axes, combo, strict=True))} for combo in combos]
    return [{}]


def _run(pipeline: Pipeline, cwd: Path, inputs: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """A tiny sequential interpreter of the format, to prove that the examples really run (the real compiler
    will run the same steps as jobs, in parallel where it may).  Returns the outputs and every stdout."""
    done: dict[str, dict[str, str]] = {}
    printed: list[str] = []
    for name in pipeline.order():
        step = pipeline.steps[name]
        base = {"params": pipeline.params, "pipeline": {"inputs": inputs}, "steps": done}
        if step.pipeline is not None:
            child = pipeline.nested(name)
            given = {k: str(cwd / t.render(base)) for k, t in step.with_.items()}  # paths cross as absolute
            assert child.source is not None
            child_outputs = _run(child, child.source.parent, given)[0]
            done[name] = {"outputs": {k: str(child.source.parent / v) for k, v in child_outputs.items()}}
            continue
        for fan in _per_run_values(step, cwd):
            for iteration in itertools.count():
                scope: dict[str, Any] = {**base, **fan, "iteration": iteration}
                scope["inputs"] = {k: t.render(scope) for k, t in step.inputs.items()}
                scope["outputs"] = {k: t.render(scope) for k, t in step.outputs.items()}
                argv = [t.render(scope) for t in step.run or ()]
                argv[0] = sys.executable if argv[0] == "python3" else argv[0]
                proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
                printed.append(proc.stdout)
                if step.until is None:
                    assert proc.returncode == 0, proc.stderr
                    if step.sequence is None or iteration + 1 == step.sequence:
                        break
                    continue
                if isinstance(step.until, UntilExpr):
                    bound = {"exit_code": proc.returncode, "iteration": iteration, "output": proc.stdout.strip()}
                    met = step.until.expr.evaluate({**bound, "metadata": {}})
                else:
                    assert isinstance(step.until, UntilExitCode)
                    met = proc.returncode == step.until.exit_code
                if met:
                    break
                assert step.max_iterations is not None and iteration + 1 < step.max_iterations, "no convergence"
        shared = {**base, "inputs": {}}
        done[name] = {"outputs": {k: t.render(shared) for k, t in step.outputs.items()}}
    scope = {"params": pipeline.params, "pipeline": {"inputs": inputs}, "steps": done}
    return {k: t.render(scope) for k, t in pipeline.outputs.items()}, printed


def test_the_examples_really_run(tmp_path: Path) -> None:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work)
    for path in sorted(work.glob("*.yaml")):
        _run(load_pipeline(path), work, {})
    root = float((work / "out/08/root.txt").read_text())
    assert math.isclose(root, math.sqrt(2), rel_tol=1e-9)
    assert json.loads((work / "out/06/walk.json").read_text())["path"].__len__() == 11
    assert len(json.loads((work / "out/03/all-stations.json").read_text())) == 3
    assert (work / "out/04/people-cities.csv").read_text().count("London") == 2
    assert len(list((work / "out/05").glob("pi-*.txt"))) == 9
    counts = json.loads((work / "sub/out/counts.json").read_text())
    assert counts["the"] == 12  # nested: every chapter counted


# --------------------------------------------------------------------------- errors, with their places


def test_unknown_key_points_at_the_key_and_suggests(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        steps:
          a:
            run: echo hi
            aftr: b
    """,
    )
    issue = at(issues(path), "steps.a.aftr")
    assert (issue.file, issue.line, issue.column) == (str(path), 6, 5)
    assert "unknown key 'aftr'" in issue.message and "did you mean 'after'" in issue.message
    assert str(issue) == f"{path}:6:5: steps.a.aftr: {issue.message}"


def test_wrong_types_and_bounds_point_at_the_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 3
        name: "has space"
        params: {bad: null}
        steps:
          a:
            run: echo hi
            parallel: 0
            env: {N: 3}
            cwd: {params.n}
          b:
            run: [echo, 1]
            sequence: many
          c:
            run: echo
            sequence: 10001
    """,
    )
    found = issues(path)
    assert (at(found, "pipeline").line, at(found, "pipeline").column) == (1, 11)
    assert "format version 3" in at(found, "pipeline").message
    assert "no dots or spaces" in at(found, "name").message
    assert at(found, "params.bad").message == "expected a string, a number or true/false"
    assert (at(found, "steps.a.parallel").line, at(found, "steps.a.parallel").column) == (7, 15)
    assert "quote it" in at(found, "steps.a.env.N").message
    assert "must be quoted: '{params.n}'" in at(found, "steps.a.cwd").message
    assert "quote it" in at(found, "steps.b.run[1]").message
    assert at(found, "steps.b.run[1]").line == 11
    assert "whole number" in at(found, "steps.b.sequence").message
    assert "10000" in at(found, "steps.c.sequence").message


def test_step_rules_each_name_their_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        steps:
          neither:
            after: []
          both:
            run: echo
            pipeline: other.yaml
          loop:
            run: echo
            until: {exit_code: 0}
          bound:
            run: echo
            max_iterations: 3
          fans:
            run: echo {item}
            for_each: {list: [1, 2]}
            product: {a: {list: [1]}, b: {glob: "*.csv"}}
          twice:
            run: echo
            until: {file: done}
            max_iterations: 2
            sequence: 2
          source:
            run: echo
            for_each: {glob: "*", list: [1]}
          stray:
            run: echo
            with: {x: y}
          nested:
            pipeline: sub.yaml
            env: {A: b}
    """,
    )
    found = issues(path)
    assert at(found, "steps.neither").line == 4
    assert "needs 'run'" in at(found, "steps.neither").message
    assert "exclude each other" in at(found, "steps.both.pipeline").message
    assert (at(found, "steps.loop.until").line, at(found, "steps.loop.until").column) == (11, 5)
    assert "needs 'max_iterations'" in at(found, "steps.loop.until").message
    assert "bounds an 'until' loop" in at(found, "steps.bound.max_iterations").message
    assert "'for_each' and 'product' exclude each other" in at(found, "steps.fans.product").message
    assert "'sequence' and 'until'" in at(found, "steps.twice.until").message
    assert at(found, "steps.source.for_each").message == "give exactly one of: glob, list, query"
    assert "needs 'pipeline'" in at(found, "steps.stray.with").message
    assert "not allowed with 'pipeline'" in at(found, "steps.nested.env").message
    assert len(found) == 9


def test_after_names_existing_steps_without_cycles(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        steps:
          a:
            run: echo
            after: [c]
          b:
            run: echo
            after: a
          c:
            run: echo
            after: [b, c, nope]
    """,
    )
    found = issues(path)
    cycle = at(found, "steps.a.after")
    assert (cycle.line, cycle.column) == (6, 5) and "a -> c -> b -> a" in cycle.message
    assert "cannot run after itself" in at(found, "steps.c.after[1]").message
    assert (at(found, "steps.c.after[2]").line, at(found, "steps.c.after[2]").column) == (12, 19)
    assert "no step 'nope'" in at(found, "steps.c.after[2]").message
    assert len(found) == 3
    # A step's own rules are judged first; the graph once every step is well-formed.
    path.write_text(path.read_text().replace("[b, c, nope]", "[b, b]"))
    twice = at(issues(path), "steps.c.after[1]")
    assert (twice.line, twice.column) == (12, 16) and "listed twice" in twice.message


def test_placeholders_must_name_something_that_exists_then(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        params: {n: 2}
        outputs:
          all: "{steps.a.outputs.dir}"
          one: "{steps.a.outputs.per}"
        steps:
          a:
            run: python3 x.py {params.m} {index} {item}
            for_each: {list: [x, y]}
            outputs: {per: "out/{item}.txt", dir: out}
          b:
            run: echo {steps.a.outputs.dir} {iteration}
            inputs: {i: "{outputs.o}"}
            outputs: {o: "{inputs.i}"}
          c:
            after: a
            run: ["{steps.a.outputs.dir}", "{steps.a.outputs.nope}", "{item.x}", "a{b"]
    """,
    )
    found = issues(path)
    assert len(found) == 1 and "lone '{'" in found[0].message  # a template that does not parse comes first
    assert (found[0].field, found[0].line, found[0].column) == ("steps.c.run[3]", 18, 76)
    path.write_text(path.read_text().replace('"a{b"', '"a{{b"'))
    found = issues(path)
    messages = {(i.field, i.line, i.column): i.message for i in found}
    assert "no param 'm'" in messages[("steps.a.run", 9, 23)]
    assert "only in steps with 'parallel'" in messages[("steps.a.run", 9, 34)]
    assert "does not run after 'a'" in messages[("steps.b.run", 13, 15)]
    assert "only with 'sequence' or 'until'" in messages[("steps.b.run", 13, 37)]
    assert "cannot be used here" in messages[("steps.b.inputs.i", 14, 18)]
    assert "no such output" in messages[("steps.c.run[1]", 18, 37)]
    assert "for_each, product or on_data" in messages[("steps.c.run[2]", 18, 63)]
    assert "changes per run" in messages[("outputs.one", 6, 9)]
    assert len(found) == 8


def test_yaml_level_problems(tmp_path: Path) -> None:
    dup = write(tmp_path, "dup.yaml", "pipeline: 1\nname: p\nname: q\nsteps: {a: {run: echo}}\n")
    issue = at(issues(dup), "name")
    assert (issue.line, issue.column) == (3, 1) and "duplicate key 'name' (first at line 2)" in issue.message
    broken = write(tmp_path, "broken.yaml", "pipeline: 1\nsteps:\n  a: [unclosed\n")
    (issue,) = issues(broken)
    assert issue.line == 4 and "invalid YAML" in issue.message
    tagged = write(tmp_path, "tag.yaml", "pipeline: 1\nname: !!python/object:os.system echo\nsteps: {a: {run: echo}}\n")
    assert "not supported" in at(issues(tagged), "name").message
    merged = write(tmp_path, "merge.yaml", "pipeline: 1\nname: p\nsteps:\n  a: &x {run: echo}\n  b: {<<: *x}\n")
    merge_issues = [(i.line, i.column) for i in issues(merged) if "merge keys (<<)" in i.message]
    assert merge_issues == [(5, 7)]
    two = write(tmp_path, "two.yaml", "pipeline: 1\n---\npipeline: 1\n")
    assert "single document" in issues(two)[0].message
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    assert "empty" in issues(empty)[0].message


def test_hostile_yaml_is_bounded(tmp_path: Path) -> None:
    laughs = ["pipeline: 1", "name: p", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"l{i}: &l{i} [{', '.join(f'*l{i - 1}' for _ in range(9))}]" for i in range(1, 9)]
    bomb = write(tmp_path, "bomb.yaml", "\n".join(laughs) + "\n")
    assert "more than 100000 values" in issues(bomb)[0].message
    recursive = write(tmp_path, "rec.yaml", "pipeline: 1\nname: &a [*a]\n")
    assert "deeper than" in issues(recursive)[0].message
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    assert "larger than" in issues(big)[0].message


def test_yaml_1_2_scalars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        params: {country: NO, answer: yes, octal: 010, hex: 0x10, flag: true, time: 1:30, ratio: .5}
        steps: {a: {run: echo}}
    """,
    )
    params = load_pipeline(path).params
    assert params == {"country": "NO", "answer": "yes", "octal": 10, "hex": 16, "flag": True, "time": "1:30"} | {
        "ratio": 0.5
    }


def test_expression_errors_point_into_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        steps:
          a:
            run: echo
            until: {expr: "metadata.loss <"}
            max_iterations: 5
          b:
            run: echo
            until: {expr: "iteration > 2 and nope"}
            max_iterations: 5
    """,
    )
    issue = at(issues(path), "steps.a.until.expr")
    assert issue.line == 6 and "syntax error" in issue.message
    path.write_text(path.read_text().replace("metadata.loss <", "metadata.loss ** 2"))
    issue = at(issues(path), "steps.a.until.expr")
    assert (issue.line, issue.column) == (6, 34) and "'**'" in issue.message
    path.write_text(path.read_text().replace("metadata.loss ** 2", "metadata.loss < 0.1"))
    issue = at(issues(path), "steps.b.until.expr")
    assert "unknown name 'nope'" in issue.message


# --------------------------------------------------------------------------- params and --set


def test_overrides_replace_params_and_counts_follow(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        params: {n: 2, word: hi}
        steps:
          a:
            run: echo {params.word} {index}
            parallel: "{params.n}"
          b:
            run: echo
            sequence: "{params.missing}"
    """,
    )
    assert "names no param" in at(issues(path), "steps.b.sequence").message
    path.write_text(path.read_text().replace("{params.missing}", "{params.n}"))
    pipeline = load_pipeline(path, dict([parse_override("n=5"), parse_override("word=hello world")]))
    assert pipeline.params == {"n": 5, "word": "hello world"}
    assert pipeline.steps["a"].parallel == 5 and pipeline.steps["b"].sequence == 5
    assert "greater than or equal to 1" in at(issues(path, {"n": 0}), "steps.a.parallel").message
    found = at(issues(path, {"nn": 1}), "params.nn")
    assert found.line is None and "no param 'nn'" in found.message and "did you mean 'n'" in found.message
    assert parse_override("x=") == ("x", "") and parse_override("x=1.5") == ("x", 1.5)
    with pytest.raises(PipelineError):
        parse_override("no-equals")
    with pytest.raises(PipelineError):
        parse_override("x=[1, 2]")


# --------------------------------------------------------------------------- nesting


def _parent(tmp_path: Path, with_: str = "{corpus: data, extra: x}", use: str = "result") -> Path:
    return write(
        tmp_path,
        "top.yaml",
        f"""
        pipeline: 1
        name: top
        workspace: wc
        steps:
          prep:
            run: echo
            outputs: {{d: out}}
          inner:
            after: prep
            pipeline: sub/inner.yaml
            with: {with_}
          use:
            after: inner
            run: echo {{steps.inner.outputs.{use}}}
    """,
    )


def test_nested_files_are_checked_against_their_own_lines(tmp_path: Path) -> None:
    _parent(tmp_path, use="nope")
    inner = write(
        tmp_path,
        "sub/inner.yaml",
        """
        pipeline: 1
        name: inner
        inputs: {corpus: {description: text}}
        outputs: {result: "{steps.s.outputs.r}"}
        steps:
          s:
            run: cat {pipeline.inputs.corpus}
            outputs: {r: r.txt}
            parallel: -1
    """,
    )
    found = issues(tmp_path / "top.yaml")
    assert [(i.file, i.field, i.line) for i in found] == [(str(inner), "steps.s.parallel", 9)]
    inner.write_text(inner.read_text().replace("    parallel: -1\n", ""))
    found = issues(tmp_path / "top.yaml")
    extra = at(found, "steps.inner.with.extra")
    assert extra.file == str(tmp_path / "top.yaml") and (extra.line, extra.column) == (11, 26)
    assert "declares no input 'extra'" in extra.message
    nope = at(found, "steps.use.run")
    assert (nope.line, nope.column) == (14, 15) and "declares no output" in nope.message
    assert len(found) == 2
    _parent(tmp_path, with_="{other: x}")
    missing = [i for i in issues(tmp_path / "top.yaml") if i.field == "steps.inner.with"]
    assert len(missing) == 1 and "needs input 'corpus'" in missing[0].message
    _parent(tmp_path, with_="{corpus: '{steps.prep.outputs.d}'}")
    top = load_pipeline(tmp_path / "top.yaml")
    assert top.nested("inner").source == inner.resolve()
    assert top.nested("inner").steps["s"].run == (Template("cat"), Template("{pipeline.inputs.corpus}"))


def test_nested_pipelines_refuse_cycles_and_missing_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "pipeline: 1\nname: a\nsteps:\n  x:\n    pipeline: sub/b.yaml\n")
    write(
        tmp_path,
        "sub/b.yaml",
        "pipeline: 1\nname: b\nsteps:\n  y:\n    pipeline: ../a.yaml\n  z:\n    pipeline: c.yml\n",
    )
    found = issues(tmp_path / "a.yaml")
    cycle = at(found, "steps.y.pipeline")
    assert cycle.file == str(tmp_path / "sub/b.yaml") and cycle.line == 5
    assert "a.yaml -> b.yaml -> a.yaml" in cycle.message
    assert "no such file" in at(found, "steps.z.pipeline").message


def test_nesting_is_bounded_in_depth_and_in_work(tmp_path: Path) -> None:
    # Seven levels, each nesting the next file ten times: a million nested pipelines, but seven files to read.
    for level in range(7):
        steps = [f"  s{i}:\n    pipeline: l{level + 1}.yaml" for i in range(10)] if level < 6 else ["  s:\n    run: x"]
        write(tmp_path, f"l{level}.yaml", f"pipeline: 1\nname: l{level}\nsteps:\n" + "\n".join(steps) + "\n")
    top = load_pipeline(tmp_path / "l0.yaml")
    assert top.nested("s0") is top.nested("s9")
    for level in range(10):
        write(tmp_path, f"d{level}.yaml", f"pipeline: 1\nname: d\nsteps:\n  s:\n    pipeline: d{level + 1}.yaml\n")
    (deepest,) = issues(tmp_path / "d0.yaml")
    assert deepest.file == str(tmp_path / "d7.yaml") and "more than 8 levels" in deepest.message


def test_a_nested_pipeline_cannot_use_its_parents_workspace(tmp_path: Path) -> None:
    _parent(tmp_path, with_="{corpus: workspace:wc/data}")  # passing a value in is the parent's business
    inner = write(
        tmp_path,
        "sub/inner.yaml",
        """
        pipeline: 1
        name: inner
        workspace: wc
        inputs: {corpus: {}}
        outputs: {result: "{steps.s.outputs.r}"}
        steps:
          s:
            run: cat workspace:wc/data.txt {pipeline.inputs.corpus}
            outputs: {r: "workspace:wc/r.txt"}
    """,
    )
    found = [i for i in issues(tmp_path / "top.yaml") if i.file == str(inner)]
    assert "its own workspace" in at(found, "workspace").message
    assert (at(found, "steps.s.run").line, at(found, "steps.s.run").column) == (8, 14)
    assert at(found, "steps.s.outputs.r").line == 9
    inner.write_text(inner.read_text().replace("workspace: wc", "workspace: inner-ws").replace("workspace:wc/", ""))
    assert load_pipeline(tmp_path / "top.yaml").nested("inner").workspace == "inner-ws"


# --------------------------------------------------------------------------- the model as the compiler sees it


def test_the_model_is_resolved_and_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        pipeline: 1
        name: p
        site: hpc
        requirements: ["numpy>=1.24,<3"]
        steps:
          late:
            after: [early]
            run: ["python3", "-c", "print('{{ok}}')"]
            site: local
            requirements: ["NumPy>=2"]
            until: {exit_code: 0}
            max_iterations: 3
          early:
            run: "python3 'my script.py' {item.meta.kind}"
            for_each: {query: {where: {kind: raw, size: {op: range, ge: 10}}}}
            on_data: {where: {kind: {op: glob, pattern: "r*"}}}
            until: {file: "{outputs.flag}"}
            max_iterations: 4
            outputs: {flag: done.flag}
    """,
    )
    p = load_pipeline(path)
    assert p.order() == ("early", "late") and p.ancestors("late") == {"early"}
    assert p.site_for("late") == "local" and p.site_for("early") == "hpc"
    assert p.requirements_for("late") == ("numpy<3,>=1.24", "NumPy>=2")
    late, early = p.steps["late"], p.steps["early"]
    assert late.run is not None and late.run[2].render({}) == "print('{ok}')"
    assert isinstance(late.until, UntilExitCode) and late.until.exit_code == 0
    assert early.run is not None and [t.text for t in early.run] == ["python3", "my script.py", "{item.meta.kind}"]
    assert isinstance(early.for_each, QuerySource) and early.for_each.query.where["kind"].op == "eq"
    assert isinstance(early.until, UntilFile) and early.scenario == 8
    assert early.on_data is not None and early.on_data.where["kind"].op == "glob"
    bad_req = write(tmp_path, "r.yaml", "pipeline: 1\nname: r\nrequirements: ['numpy >>= 1']\nsteps: {a: {run: x}}\n")
    assert "PEP 508" in at(issues(bad_req), "requirements[0]").message


# --------------------------------------------------------------------------- the expression language


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("metadata.loss < 0.01", True),
        ("metadata['loss'] * 100 >= 0.5", True),
        ("1 < iteration <= 3", True),
        ("exit_code == 0 and not (iteration > 5)", True),
        ("'b' in tags and 'z' not in tags", True),
        ("float(output) / 2", 0.25),
        ("len(tags) + abs(-2) + min(1, 2) + max([4, 3])", 10),
        ("tags[-1] + str(7 // 2) + str(7 % 4)", "c33"),
        ("round(2.567, 1) if exit_code == 0 else None", 2.6),
        ("-metadata.loss + 1", 0.995),
        ("int('42') - True", 41),
    ],
)
def test_expressions_compute_what_they_say(text: str, value: Any) -> None:
    variables = {"metadata": {"loss": 0.005}, "iteration": 2, "exit_code": 0, "tags": ["a", "b", "c"], "output": "0.5"}
    assert compile_expr(text).evaluate(variables) == value


def test_expression_names_are_the_free_names() -> None:
    assert compile_expr("len(output) > 2 and metadata.x == iteration").names == {"output", "metadata", "iteration"}


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch pwned')",
        "().__class__.__bases__[0].__subclasses__()",
        "metadata.__class__",
        "metadata['__class__']",
        "(lambda: 1)()",
        "[x for x in tags]",
        "{k: 1 for k in tags}",
        "2 ** 64",
        "open('/etc/passwd')",
        "getattr(metadata, 'x')",
        "eval('1')",
        "metadata.get('x')",
        "f'{output}'",
        "(a := 1)",
        "tags[iteration]",
        "*tags",
        "x" + " + x" * 300,
        "'" + "a" * 2000 + "'",
        "a is None",
        "b'bytes'",
    ],
)
def test_hostile_expressions_are_refused_at_compile_time(text: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExprError):
        compile_expr(text)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("'ab' * 100000", "longer than"),
        ("output * 6000", "longer than"),
        ("output + output", "longer than"),
        ("1 / 0", "ZeroDivisionError"),
        ("float('inf') > 1", "not a finite number"),
        ("int('9' * 5000)", "ValueError"),
        ("nope", "not defined"),
        ("metadata.missing", "no key 'missing'"),
        ("output.upper", "cannot look up 'upper'"),
        ("str(obj)", "not plain data"),
    ],
)
def test_expressions_fail_cleanly_at_run_time(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        compile_expr(text).evaluate({"metadata": {}, "output": "x" * 5001, "obj": object()})


def test_expressions_never_reach_eval_exec_or_compile_to_code(monkeypatch: Any) -> None:
    real_compile = builtins.compile
    calls: list[int] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("eval or exec was called")

    def parse_only(source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any) -> Any:
        # ast.parse is compile(..., PyCF_ONLY_AST): a syntax tree, never code.
        assert flags & ast.PyCF_ONLY_AST, "compile() to code was called"
        calls.append(flags)
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "eval", forbidden)
        patch.setattr(builtins, "exec", forbidden)
        patch.setattr(builtins, "compile", parse_only)
        expr = compile_expr("max(1, 2) + len('abc') == 5 and metadata.k in ['v']")
        assert expr.evaluate({"metadata": {"k": "v"}}) is True
    assert calls, "the text was parsed through ast.parse"


def test_expression_columns() -> None:
    with pytest.raises(ExprError) as caught:
        compile_expr("a + b ** 2")
    assert caught.value.offset == 6 and "column 7" in str(caught.value)


# --------------------------------------------------------------------------- templates


def test_templates_substitute_names_only() -> None:
    t = Template("{{x}} {params.n}-{item.meta.k} {{{index}}} {flag}")
    assert t.refs == ("params.n", "item.meta.k", "index", "flag")
    values = {"params": {"n": 3}, "item.meta.k": "v", "index": 0, "flag": False}
    assert t.render(values) == "{x} 3-v {0} false"
    assert Template("no placeholders }} {{").render({}) == "no placeholders } {"
    assert Template("plain").is_literal


@pytest.mark.parametrize("text", ["{0.__class__}", "{a[0]}", "{a!r}", "{a:>10}", "{}", "{ a }", "a{b", "a}b", "{a.}"])
def test_templates_refuse_anything_but_dotted_names(text: str) -> None:
    with pytest.raises(TemplateError):
        Template(text)


def test_template_rendering_errors() -> None:
    with pytest.raises(TemplateError, match="no value for"):
        Template("{params.x}").render({"params": {}})
    with pytest.raises(TemplateError, match="not a string or a number"):
        Template("{params}").render({"params": {"x": 1}})
    with pytest.raises(TemplateError, match="longer than"):
        Template("{a}{a}").render({"a": "x" * 40_000})


# --------------------------------------------------------------------------- the command


def test_validate_prints_one_line_per_valid_file(tmp_path: Path, capsys: Any) -> None:
    files = [str(EXAMPLES / "03-for-each.yaml"), str(EXAMPLES / "09-nested.yaml")]
    # An unreachable bus: validate must not try to connect.
    assert main(["--home", str(tmp_path), "--url", "nats://127.0.0.1:9", "validate", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{files[0]}: ok: station-stats, 2 steps: stats [3: for each], collect [1]"
    assert out[1].startswith(f"{files[1]}: ok: book-report, 3 steps:") and "nested sub/count-words.yaml" in out[1]


def test_validate_reports_every_error_and_exits_2(tmp_path: Path, capsys: Any) -> None:
    bad = write(tmp_path, "bad.yaml", "pipeline: 1\nname: p\nparams: {n: 1}\nsteps:\n  a:\n    run: echo {params.m}\n")
    good = EXAMPLES / "01-once.yaml"
    assert main(["--home", str(tmp_path), "validate", str(bad), str(good), "--set", "top=3"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert f"{bad}: params.top: --set: the pipeline has no param 'top' (known: n)" in lines
    assert f"{bad}:6:15: steps.a.run: {{params.m}}: no param 'm' (known: n)" in lines
    assert captured.out.startswith(f"{good}: ok: count-words")


def test_validate_json(tmp_path: Path, capsys: Any) -> None:
    bad = write(tmp_path, "bad.yaml", "pipeline: 1\nname: p\nsteps: {a: {run: echo, parallel: 0}}\n")
    assert main(["--home", str(tmp_path), "validate", "--json", str(EXAMPLES / "02-parallel.yaml"), str(bad)]) == 2
    good_doc, bad_doc = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert good_doc["valid"] and good_doc["steps"][0] == {
        "name": "sample",
        "scenario": 2,
        "fan_out": "parallel",
        "repeat": "once",
        "after": [],
        "nested": None,
    }
    assert bad_doc["issues"] == [
        {
            "file": str(bad),
            "line": 3,
            "column": 34,
            "path": "steps.a.parallel",
            "message": "Input should be greater than or equal to 1",
        }
    ]


def test_validate_as_a_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
    cmd = [sys.executable, "-m", "lwfm_bus", "--home", str(tmp_path), "validate"]
    ok = subprocess.run(
        [*cmd, str(EXAMPLES / "02-parallel.yaml"), "--set", "runs=8"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and "sample [2: parallel 8]" in ok.stdout
    bad = subprocess.run(
        [*cmd, str(EXAMPLES / "02-parallel.yaml"), "--set", "runs=0"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        f"{EXAMPLES / '02-parallel.yaml'}:12:15: steps.sample.parallel: Input should be greater than or equal to 1"
    ]
