"""Agents and cancel requests: a cancel stored for a job's logical id is honoured by its
retry attempts; a failed cancel check before a launch leaves no launch claim behind."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._jobs import JobContext
from lwfm_bus._retry import retry_id
from lwfm_bus._sites import _agent
from lwfm_bus._sites._submit import Submission, request_cancel, store_submission


async def test_a_retry_attempt_of_a_job_cancelled_by_its_logical_id_is_cancelled_not_run(
    bus: lb.Bus, tmp_path: Path
) -> None:
    logical = lb.new_id()
    # The user cancelled the logical job (what Bus.cancel stores for a retried job)...
    await request_cancel(bus, JobContext(job_id=logical, site="local"))
    # ... and an attempt after the first, under its own id, is submitted to the site.
    ran = tmp_path / "ran"
    attempt = JobContext(job_id=retry_id(logical, 2), site="local", attempt=2, attempt_of=logical)
    defn = lb.JobDefn.of([sys.executable, "-c", f"open({str(ran)!r}, 'w').close()"])
    assert await store_submission(bus, Submission(ctx=attempt, defn=defn))
    status = await bus.wait(attempt.job_id, timeout=30)
    assert status.state is JobState.CANCELLED
    assert not ran.exists()


async def test_a_failed_cancel_check_before_a_launch_leaves_no_claim_for_another_agent(
    bus_config: lb.BusConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agent A (its own home) cannot ask whether a job was cancelled: it hands the submission
    back.  It must not have claimed the job's launch meanwhile, or agent B (another home),
    handed the submission next, would wait for the end of a job nobody started."""
    real = _agent.cancel_requested
    failing: set[object] = set()
    failed = anyio.Event()

    async def cancel_requested(bus: object, site: str, job_id: str) -> bool:
        if bus in failing:
            failed.set()
            raise RuntimeError("this agent cannot ask (test)")
        return await real(bus, site, job_id)  # type: ignore[arg-type]

    monkeypatch.setattr(_agent, "cancel_requested", cancel_requested)
    client = bus_config.model_copy(update={"agents": ()})
    async with lb.connect(client) as bus:
        async with lb.connect(bus_config.model_copy(update={"home": tmp_path / "a"})) as a:
            failing.add(a)
            job = await bus.submit(lb.JobDefn.of([sys.executable, "-c", "pass"]))
            await failed.wait()  # A was handed the submission first, and handed it back
            async with lb.connect(bus_config.model_copy(update={"home": tmp_path / "b"})):
                # Redelivered to A (handed back again) or to B, which launches it.
                status = await job.wait(timeout=60)
    assert status.state is JobState.COMPLETE
