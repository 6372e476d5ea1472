"""What ``run`` shows while a pipeline runs (issue 17, item 8): a loop's lines in the loop's order.

A loop's next iteration, and the gate that stands for the finished loop, are started by a
marker that the previous iteration's step runner notates before its process exits, so their
events often come before the end of the iteration that started them.  Here nothing runs: the
test itself reports the jobs' states, on a real server, in exactly that order, and checks
what the runner shows.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline

LOOP = """
    pipeline: 1
    name: loop-order
    steps:
      try:
        run: [python3, -c, "pass"]
        until: {exit_code: 0}
        max_iterations: 3
"""
_LINE = re.compile(r"^ *\d+\.\ds  (?P<name>\S+) +(?P<state>[A-Z]+)(?P<rest>.*)$")


async def _job_ids(bus: lb.Bus, name: str, count: int) -> dict[str, str]:
    """Job name -> id of the run's jobs: the root's from its READY, the others' from their triggers."""

    async def scan() -> dict[str, str]:
        ids: dict[str, str] = {}
        workflow: str | None = None
        async with bus.subscribe("lwfm.>", from_start=True) as events:
            async for event in events:
                if isinstance(event, lb.WorkflowDefinedEvent) and event.data.name == name:
                    workflow = event.data.workflow_id
                elif isinstance(event, lb.TriggerRegisteredEvent) and event.data.definition.workflow_id == workflow:
                    target = event.data.definition.downstream
                    assert target.job.name is not None and target.job_id is not None
                    ids[target.job.name] = target.job_id
                elif isinstance(event, lb.JobStatusEvent) and event.data.workflow_id == workflow:
                    ids[event.data.name or ""] = event.data.job_id
                if len(ids) == count:
                    return ids
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), 30)


async def test_a_loops_lines_come_in_the_loops_order(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(textwrap.dedent(LOOP))
    lines: list[str] = []
    # No agent runs anything: the states below are the only ones there are.
    async with lb.connect(bus_config.model_copy(update={"agents": ()})) as bus:
        running = asyncio.create_task(run_pipeline(bus, load_pipeline(path), lines.append))
        try:
            ids = await _job_ids(bus, "loop-order", 4)
            it0, it1, it2 = (ids[f"loop-order:try@{k}"] for k in range(3))
            gate = ids["loop-order:try#loop"]
            workflow = (await bus.status(it0)).workflow_id
            arrivals = [  # the order a real run's events come in
                (it0, JobState.RUNNING), (it1, JobState.RUNNING), (it0, JobState.COMPLETE),
                (it2, JobState.RUNNING), (it1, JobState.COMPLETE),
                (gate, JobState.RUNNING), (gate, JobState.COMPLETE), (it2, JobState.COMPLETE),
            ]  # fmt: skip
            names = {job_id: name for name, job_id in ids.items()}
            for job_id, state in arrivals:
                status = lb.JobStatus(
                    job_id=job_id, site="local", state=state, workflow_id=workflow, name=names[job_id]
                )
                await bus.publish(lb.make_event(status, source="/tests/progress"))
            report = await asyncio.wait_for(running, 30)
        finally:
            running.cancel()
    assert report.ok, report.failures
    shown = [m.group("name", "state", "rest") for m in map(_LINE.match, lines) if m is not None]
    assert [(name.removeprefix("loop-order:"), state) for name, state, _ in shown] == [
        ("try@0", "RUNNING"), ("try@0", "COMPLETE"),
        ("try@1", "RUNNING"), ("try@1", "COMPLETE"),
        ("try@2", "RUNNING"), ("try@2", "COMPLETE"),
        ("try#loop", "RUNNING"), ("try#loop", "COMPLETE"),
    ]  # fmt: skip
    # The step's count of finished loops changes with the gate's line, not before it.
    assert [rest.strip() for name, state, rest in shown if state == "COMPLETE"] == ["[try: 0/1]"] * 3 + ["[try: 1/1]"]
