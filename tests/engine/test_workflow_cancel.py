"""A run can be stopped in one call (issue 17, item 3): triggers withdrawn, jobs cancelled, then quiet."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus import JobState
from tests._helpers import cli_env, wait_state

_ENGINE = lb.EngineConfig(ack_wait_s=5)


async def test_cancel_workflow_withdraws_its_triggers_and_cancels_its_jobs(bus: lb.Bus, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    async with lb.serve_engine(bus, _ENGINE):
        wf = await bus.define_workflow("to stop")
        other = await bus.define_workflow("left alone")
        # A chain A -> B -> C with A running for ever, and a trigger of another workflow.
        a = await bus.submit(lb.JobDefn.of(["sleep", "300"]), workflow=wf)
        b_id, c_id = lb.new_id(), lb.new_id()
        touch = lb.JobDefn.of(["/bin/sh", "-c", f'echo "$LWFM_JOB_ID" >> {ran}'])
        t1 = await bus.set_job_trigger(touch, a, job_id=b_id, workflow=wf)
        t2 = await bus.set_job_trigger(touch, b_id, job_id=c_id, workflow=wf)
        keep = await bus.set_job_trigger(touch, lb.new_id(), workflow=other)
        await wait_state(bus, a.job_id, JobState.RUNNING)

        stop = await bus.cancel_workflow(wf, reason="wrong input")

        assert set(stop.triggers_withdrawn) == {t1.trigger_id, t2.trigger_id}
        assert stop.jobs_cancelled == (a.job_id,) and stop.still_active == ()
        assert (await bus.status(a.job_id)).state is JobState.CANCELLED
        for t in (t1, t2):
            record = await bus.trigger(t.trigger_id)
            assert record is not None and (record.state, record.reason) == ("cancelled", "wrong input")
        kept = await bus.trigger(keep.trigger_id)
        assert kept is not None and kept.state == "active"
        assert not ran.exists()  # B and C never ran: a cancelled upstream fires nothing
        again = await bus.cancel_workflow(wf)
        assert again == lb.WorkflowStop(wf.workflow_id, (), (), ())


async def test_many_trigger_lookups_make_no_consumer_each(bus: lb.Bus) -> None:
    """920 cancel_trigger calls in a loop crashed with 'maximum consumers limit reached'."""
    triggers = [await bus.set_job_trigger(lb.JobDefn.of(["true"]), lb.new_id()) for _ in range(300)]
    before = (await bus.jetstream.stream_info("LWFM")).state.consumer_count
    for t in triggers:
        await bus.cancel_trigger(t.trigger_id)
    after = (await bus.jetstream.stream_info("LWFM")).state.consumer_count
    assert after - before < 5, (before, after)
    assert {r.state for r in await bus.triggers()} == {"cancelled"}


async def test_workflow_cancel_from_the_shell(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    env = cli_env()
    cli = [sys.executable, "-m", "lwfm_bus", "--home", str(bus_config.home), "--url", bus_config.servers[0]]
    async with lb.serve_engine(bus, _ENGINE):
        wf = await bus.define_workflow("shell")
        a = await bus.submit(lb.JobDefn.of(["sleep", "300"]), workflow=wf)
        t = await bus.set_job_trigger(lb.JobDefn.of(["true"]), a, workflow=wf)
        await wait_state(bus, a.job_id, JobState.RUNNING)
        proc = await asyncio.create_subprocess_exec(
            *cli, "workflow", "cancel", wf.workflow_id, "--reason", "typo in input",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        f"workflow {wf.workflow_id}: 1 trigger(s) withdrawn, 1 job(s) cancelled",
        f"  cancelled {a.job_id}",
    ]
    record = await bus.trigger(t.trigger_id)
    assert record is not None and (record.state, record.reason) == ("cancelled", "typo in input")
    nope = await asyncio.create_subprocess_exec(
        *cli, "workflow", "cancel", "no-such-workflow", stderr=asyncio.subprocess.PIPE, env=env
    )
    _, err = await asyncio.wait_for(nope.communicate(), 60)
    assert nope.returncode == 2 and len(err.decode().strip().splitlines()) == 1
