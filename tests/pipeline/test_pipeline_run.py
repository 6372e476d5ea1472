"""Running pipelines: every example end to end on the local site, failure, resume, loops,
nesting, a step in its own Python environment, and the ``lwfm-bus run`` command.

Each test runs against its own embedded server with its engine (``lb.connect`` with a
fresh home), entered in the test's task; jobs are real processes running the step
runner (``lwfm-bus step-exec``) around the step's command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._config import BusConfig
from lwfm_bus._errors import PipelineError
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import RunReport, run_pipeline
from tests.pipeline.test_pyenv import write_wheel

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLI = [sys.executable, "-m", "lwfm_bus"]


@asynccontextmanager
async def bus_at(home: Path) -> AsyncIterator[lb.Bus]:
    async with lb.connect(BusConfig(home=home)) as bus:
        yield bus


def _examples(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("out"))
    return copy


def _pipeline(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


async def _run(bus: lb.Bus, path: Path) -> RunReport:
    lines: list[str] = []
    report = await run_pipeline(bus, load_pipeline(path), lines.append)
    assert lines and lines[0].startswith("run ")
    return report


async def _events(bus: lb.Bus, workflow_id: str) -> list[lb.JobStatus]:
    async with bus.replay(lb.workflow_filter(workflow_id)) as history:
        return [e.data async for e in history if isinstance(e, lb.JobStatusEvent)]


async def _names(bus: lb.Bus, workflow_id: str, state: JobState) -> list[str]:
    """Job names that reached ``state``, in the order the stream recorded them."""
    records = {r.job_id: r.name for r in await bus.jobs(workflow=workflow_id)}
    return [records[e.job_id] or "" for e in await _events(bus, workflow_id) if e.state is state]


# --------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
async def test_every_example_runs_to_the_end(tmp_path: Path, example: str) -> None:
    examples = _examples(tmp_path)
    async with bus_at(tmp_path / "home") as bus:
        report = await _run(bus, examples / example)
        assert report.ok, report.failures
        assert report.steps and all(done == total > 0 for done, total in report.steps.values()), report.steps
        completed = await _names(bus, report.workflow_id, JobState.COMPLETE)
        everything = await bus.jobs(workflow=report.workflow_id, limit=None)
        assert len(await bus.jobs(workflow=report.workflow_id, limit=1)) == 1
        assert len(everything) == len({r.job_id for r in everything}) >= len(completed)
    if example == "06-sequence.yaml":  # N times in sequence: one after another, in order
        assert completed == [f"random-walk:walk@{k}" for k in range(10)]
    if example == "08-loop-until.yaml":  # until: more than one iteration, and the answer converged
        iterations = [n for n in completed if n.startswith("newton-sqrt:solve@")]
        assert len(iterations) > 1
        assert abs(float((examples / "out/08/root.txt").read_text()) - 2**0.5) < 1e-9
    if example == "05-product.yaml":  # one run per combination of 3 sizes x 3 seeds
        assert len({n for n in completed if n.startswith("pi-convergence:sample[")}) == 9
    if example == "09-nested.yaml":  # the nested pipeline's step ran under the nesting step's path
        assert "book-report:count/count" in completed
        assert (examples / "sub/out/counts.json").exists()


# --------------------------------------------------------------------------- failure


async def test_a_failing_step_fails_the_run_and_nothing_after_it_starts(tmp_path: Path) -> None:
    path = _pipeline(
        tmp_path,
        """
        pipeline: 1
        name: breaks
        steps:
          first:
            run: [python3, -c, "pass"]
          second:
            after: first
            run: [python3, -c, "import sys; sys.exit(4)"]
          third:
            after: second
            run: [python3, -c, "pass"]
        """,
    )
    async with bus_at(tmp_path / "home") as bus:
        report = await _run(bus, path)
        assert not report.ok
        assert report.failures == ["breaks:second: FAILED"]
        assert report.steps == {"first": (1, 1), "second": (0, 1), "third": (0, 1)}
        names = {r.name for r in await bus.jobs(workflow=report.workflow_id)}
        assert "breaks:third" not in names
        states = {t.state for t in await bus.triggers(workflow=report.workflow_id)}
        assert "active" not in states  # third's trigger was withdrawn (or expired): nothing can start it


# --------------------------------------------------------------------------- resume


RESUMABLE = """
    pipeline: 1
    name: resumable
    params: {greeting: hello}
    steps:
      make:
        run: [python3, make.py, "{inputs.src}", "{outputs.out}"]
        env: {GREETING: "{params.greeting}"}
        inputs: {src: in.txt}
        outputs: {out: out/made.txt}
      use:
        after: make
        run: [python3, -c, "import sys; open('used.log', 'a').write('x')"]
"""
MAKE = "import sys\nopen('made.log', 'a').write('x')\nopen(sys.argv[2], 'w').write(open(sys.argv[1]).read().upper())\n"


async def test_a_rerun_skips_a_step_whose_outputs_are_recorded_for_the_same_inputs(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, RESUMABLE)
    (tmp_path / "make.py").write_text(MAKE)
    (tmp_path / "in.txt").write_text("hello")
    (tmp_path / "out").mkdir()
    async with bus_at(tmp_path / "home") as bus:
        assert (await _run(bus, path)).ok
        assert (tmp_path / "out/made.txt").read_text() == "HELLO"
        again = await _run(bus, path)
        assert again.ok
        assert again.up_to_date == 1
        assert (tmp_path / "made.log").read_text() == "x"  # not run again: same inputs, outputs recorded
        assert (tmp_path / "used.log").read_text() == "xx"  # no outputs declared: it always runs

        (tmp_path / "in.txt").write_text("changed")  # new input content: a new key
        assert (await _run(bus, path)).ok
        assert (tmp_path / "made.log").read_text() == "xx"
        assert (tmp_path / "out/made.txt").read_text() == "CHANGED"

        (tmp_path / "out/made.txt").write_text("tampered")  # the recorded output changed: run again
        assert (await _run(bus, path)).ok
        assert (tmp_path / "made.log").read_text() == "xxx"
        assert (tmp_path / "out/made.txt").read_text() == "CHANGED"

        (tmp_path / "make.py").write_text(MAKE + "# edited\n")  # the script the command names changed
        assert (await _run(bus, path)).ok
        assert (tmp_path / "made.log").read_text() == "xxxx"

        changed_env = await run_pipeline(bus, load_pipeline(path, {"greeting": "bye"}), lambda _: None)
        assert changed_env.ok and changed_env.up_to_date == 0  # the step's environment changed
        assert (tmp_path / "made.log").read_text() == "xxxxx"


# --------------------------------------------------------------------------- loops


LOOP = """
    pipeline: 1
    name: loop
    steps:
      try:
        run: [python3, -c, "import sys; sys.exit(0 if int(sys.argv[1]) >= {params.at} else 1)", "{iteration}"]
        until: {exit_code: 0}
        max_iterations: 5
      after-loop:
        after: try
        run: [python3, -c, "pass"]
    params: {at: 2}
"""


async def test_a_loop_stops_at_the_first_iteration_that_meets_its_condition(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, LOOP)
    async with bus_at(tmp_path / "home") as bus:
        report = await _run(bus, path)
        assert report.ok, report.failures
        completed = await _names(bus, report.workflow_id, JobState.COMPLETE)
        assert [n for n in completed if n.startswith("loop:try@")] == ["loop:try@0", "loop:try@1", "loop:try@2"]
        assert "loop:after-loop" in completed
        assert all(r.name != "loop:try@3" for r in await bus.jobs(workflow=report.workflow_id))


async def test_a_loop_that_never_meets_its_condition_fails_after_max_iterations(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, LOOP.replace("at: 2", "at: 99"))
    async with bus_at(tmp_path / "home") as bus:
        report = await _run(bus, path)
        assert not report.ok
        assert report.failures == ["loop:try@4: FAILED"]
        ran = [r.name for r in await bus.jobs(workflow=report.workflow_id) if (r.name or "").startswith("loop:try@")]
        assert sorted(ran) == [f"loop:try@{k}" for k in range(5)]
        failed = [r for r in await bus.jobs(workflow=report.workflow_id) if r.state is JobState.FAILED]
        assert [r.exit_code for r in failed] == [3]


# --------------------------------------------------------------------------- nesting


PARENT = """
    pipeline: 1
    name: parent
    workspace: parent-ws
    steps:
      inner:
        pipeline: child.yaml
      read:
        after: inner
        run: [python3, -c, "import sys; open('read.txt', 'w').write(open(sys.argv[1]).read())",
              "{steps.inner.outputs.note}"]
"""
CHILD = """
    pipeline: 1
    name: child
    workspace: child-ws
    outputs: {note: "{steps.write.outputs.note}"}
    steps:
      write:
        run: [python3, -c, "import sys; open(sys.argv[1], 'w').write('from the child')", "{outputs.note}"]
        outputs: {note: "workspace:child-ws/note.txt"}
"""


async def test_a_nested_pipeline_works_in_its_own_workspace(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, PARENT, "parent.yaml")
    _pipeline(tmp_path, CHILD, "child.yaml")
    home = tmp_path / "home"
    async with bus_at(home) as bus:
        report = await _run(bus, path)
        assert report.ok, report.failures
        child_root = (await bus.workspaces.get("child-ws")).roots["local"]
        parent_root = (await bus.workspaces.get("parent-ws")).roots["local"]
    assert child_root != parent_root
    assert (Path(child_root) / "note.txt").read_text() == "from the child"
    assert not any(Path(parent_root).iterdir())  # nothing of the child's landed in the parent's
    assert (tmp_path / "read.txt").read_text() == "from the child"  # the output crossed back out


async def test_a_nested_pipeline_cannot_use_its_parents_workspace(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, PARENT, "parent.yaml")
    _pipeline(tmp_path, CHILD.replace("workspace:child-ws/note.txt", "workspace:parent-ws/note.txt"), "child.yaml")
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path)
    assert any("parent-ws" in issue.message for issue in caught.value.issues)


# --------------------------------------------------------------------------- software environments


ENV_STEP = """
    pipeline: 1
    name: with-env
    steps:
      show:
        requirements: ["lwfmtestpkg{spec}"]
        env: {{PIP_NO_INDEX: "1", PIP_FIND_LINKS: "{links}"}}
        run: [python, -c, "import lwfmtestpkg, sys; open('version.txt', 'w').write(lwfmtestpkg.__version__)"]
"""


async def test_a_step_runs_in_its_own_python_environment(tmp_path: Path) -> None:
    links = tmp_path / "wheels"
    write_wheel(links, "1.0")
    write_wheel(links, "2.0")
    async with bus_at(tmp_path / "home") as bus:
        good = _pipeline(tmp_path, ENV_STEP.format(spec="==1.0", links=links))
        report = await _run(bus, good)
        assert report.ok, report.failures
        assert (tmp_path / "version.txt").read_text() == "1.0"

        bad = _pipeline(tmp_path, ENV_STEP.format(spec=">=99", links=links), "bad.yaml")
        report = await _run(bus, bad)
        assert not report.ok
        (job,) = await bus.jobs(workflow=report.workflow_id)
        assert job.state is JobState.FAILED
        stderr = (await bus.logs(job.job_id, "stderr")).decode()
        assert "could not install lwfmtestpkg>=99" in stderr


# --------------------------------------------------------------------------- the command


def test_lwfm_bus_run_exits_0_1_or_2(tmp_path: Path) -> None:
    examples = _examples(tmp_path)
    env_home = ["--home", str(tmp_path / "home")]
    ok = subprocess.run([*CLI, *env_home, "run", str(examples / "01-once.yaml")], capture_output=True, text=True,
                        timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "count-words:count" in ok.stdout and "complete" in ok.stdout

    broken = _pipeline(
        tmp_path, "pipeline: 1\nname: x\nsteps:\n  a:\n    run: [python3, -c, 'import sys; sys.exit(5)']\n"
    )
    failed = subprocess.run([*CLI, *env_home, "run", str(broken)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "failed: x:a: FAILED" in failed.stderr

    invalid = _pipeline(tmp_path, "pipeline: 1\nname: x\nsteps:\n  a:\n    rn: oops\n", "invalid.yaml")
    refused = subprocess.run([*CLI, *env_home, "run", str(invalid)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert f"{invalid}:5:5" in refused.stderr


# --------------------------------------------------------------------------- data-flow dependencies


ON_DATA = """
    pipeline: 1
    name: on-data
    steps:
      prepare:
        run: [python3, -c, "pass"]
      consume:
        after: prepare
        on_data: {where: {kind: raw-scan, run: "{tag}"}}
        run: [python3, -c, "open('consumed.txt', 'w').write('yes')"]
"""


async def test_a_step_waits_for_data_matching_its_signature_and_its_after_steps(tmp_path: Path) -> None:
    tag = lb.new_id()
    path = _pipeline(tmp_path, ON_DATA.replace("{tag}", tag))
    async with bus_at(tmp_path / "home") as bus:
        running = asyncio.create_task(run_pipeline(bus, load_pipeline(path), lambda _: None))
        # 'prepare' completes, and 'consume' still waits: no matching data yet.
        wf = await _workflow_of(bus, "on-data")
        await _until_complete(bus, wf, "on-data:prepare")
        assert not (tmp_path / "consumed.txt").exists()
        await bus.notate(tmp_path / "scan.dat", {"kind": "raw-scan", "run": "another"})  # does not match
        await bus.notate(tmp_path / "scan.dat", {"kind": "raw-scan", "run": tag})
        report = await asyncio.wait_for(running, 60)
    assert report.ok, report.failures
    assert (tmp_path / "consumed.txt").read_text() == "yes"


async def _workflow_of(bus: lb.Bus, name: str, timeout: float = 30) -> str:
    async def first() -> str:
        async with bus.subscribe("lwfm.*.workflow.>", from_start=True) as events:
            async for event in events:
                if isinstance(event, lb.WorkflowDefinedEvent) and event.data.name == name:
                    return event.data.workflow_id
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(first(), timeout)


async def _until_complete(bus: lb.Bus, workflow_id: str, job_name: str, timeout: float = 60, count: int = 1) -> None:
    await _until_state(bus, workflow_id, job_name, JobState.COMPLETE, timeout, count)


async def _until_state(
    bus: lb.Bus, workflow_id: str, job_name: str, state: JobState, timeout: float = 60, count: int = 1
) -> None:
    async def wait() -> None:
        seen = 0
        async with bus.subscribe(lb.workflow_filter(workflow_id), from_start=True) as events:
            async for event in events:
                if not isinstance(event, lb.JobStatusEvent):
                    continue
                if event.data.state is state and event.data.name == job_name:
                    seen += 1
                    if seen == count:
                        return
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    await asyncio.wait_for(wait(), timeout)


PER_ARRIVAL = """
    pipeline: 1
    name: per-arrival
    steps:
      first:
        run: [python3, -c, "pass"]
      each:
        on_data: {where: {kind: scan, tag: "{tag}"}, fire: each}
        run: [python3, -c, "import sys; open(sys.argv[1] + '.seen', 'w').write(sys.argv[2])", "{item}",
              "{item.meta.energy}"]
"""


async def test_a_step_runs_once_per_arriving_data_after_the_run_returns(tmp_path: Path) -> None:
    tag = lb.new_id()
    path = _pipeline(tmp_path, PER_ARRIVAL.replace("{tag}", tag))
    async with bus_at(tmp_path / "home") as bus:
        lines: list[str] = []
        report = await run_pipeline(bus, load_pipeline(path), lines.append)
        assert report.ok, report.failures  # done: the per-arrival step is never waited for
        assert any("keeps running once per matching data" in line for line in lines)
        scans = [tmp_path / f"scan-{i}.dat" for i in range(2)]
        for i, scan in enumerate(scans):
            scan.write_text("x")
            await bus.notate(scan, {"kind": "scan", "tag": tag, "energy": 10 + i})
        await bus.notate(tmp_path / "other.dat", {"kind": "scan", "tag": "not-this-one"})
        await _until_complete(bus, report.workflow_id, "per-arrival:each", count=2)

        again = await run_pipeline(bus, load_pipeline(path), lines.append)  # a new run replaces the old trigger
        assert again.ok
        active = [t for t in await bus.triggers(state="active") if t.kind == "data-flow"]
        assert [t.workflow_id for t in active] == [again.workflow_id]
    assert [Path(f"{s}.seen").read_text() for s in scans] == ["10", "11"]
    assert not (tmp_path / "other.dat.seen").exists()


UNTIL_FILE = """
    pipeline: 1
    name: until-file
    steps:
      work:
        run: [python3, -c, "import sys; k = int(sys.argv[1]); k >= 1 and open('done.flag', 'w').close()", "{iteration}"]
        until: {file: done.flag}
        max_iterations: 4
"""

FIT = """
import subprocess, sys
k = int(sys.argv[1])
loss = 2 / 2**k  # halves each iteration: below 0.5 first at k = 3
subprocess.run([sys.executable, "-m", "lwfm_bus", "notate", f"fit-{k}.json", "-m", f"loss={loss}"], check=True)
"""

UNTIL_METADATA = """
    pipeline: 1
    name: until-metadata
    steps:
      fit:
        run: ["PYTHON", fit.py, "{iteration}"]  # an interpreter that has lwfm_bus: the test's
        until: {metadata: {where: {loss: {op: range, lt: 0.5}}}}
        max_iterations: 6
"""


async def test_a_loop_can_stop_on_a_file_or_on_notated_metadata(tmp_path: Path) -> None:
    file_loop = _pipeline(tmp_path, UNTIL_FILE, "file.yaml")
    meta_loop = _pipeline(tmp_path, UNTIL_METADATA.replace("PYTHON", sys.executable), "meta.yaml")
    (tmp_path / "fit.py").write_text(FIT)
    async with bus_at(tmp_path / "home") as bus:
        report = await _run(bus, file_loop)
        assert report.ok, report.failures
        done = [n for n in await _names(bus, report.workflow_id, JobState.COMPLETE) if "@" in n]
        assert done == ["until-file:work@0", "until-file:work@1"]

        report = await _run(bus, meta_loop)
        assert report.ok, report.failures
        done = [n for n in await _names(bus, report.workflow_id, JobState.COMPLETE) if "@" in n]
        assert done == [f"until-metadata:fit@{k}" for k in range(4)]


BLOCKING = """
    pipeline: 1
    name: interrupted
    steps:
      slow:
        run: [python3, -c, "open('ran.log', 'a').write('x'); open('gate').read()"]
      after:
        after: slow
        run: [python3, -c, "open('after.log', 'a').write('x')"]
"""


async def test_a_resumed_run_does_not_start_again_what_the_interrupted_one_started(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, BLOCKING)
    os.mkfifo(tmp_path / "gate")
    async with bus_at(tmp_path / "home") as bus:
        first = asyncio.create_task(run_pipeline(bus, load_pipeline(path), lambda _: None))
        wf = await _workflow_of(bus, "interrupted")
        await _until_state(bus, wf, "interrupted:slow", JobState.RUNNING)
        first.cancel()  # the runner dies; its job and its trigger live on the bus
        with contextlib.suppress(asyncio.CancelledError):
            await first
        resumed = asyncio.create_task(run_pipeline(bus, load_pipeline(path), lambda _: None, resume=wf))
        await asyncio.to_thread((tmp_path / "gate").write_text, "go")
        report = await asyncio.wait_for(resumed, 60)
    assert report.ok, report.failures
    assert report.workflow_id == wf
    assert (tmp_path / "ran.log").read_text() == "x"  # started once, by the first run
    assert (tmp_path / "after.log").read_text() == "x"
