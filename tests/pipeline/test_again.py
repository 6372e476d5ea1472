"""What a resumed run starts again (pure: plans and states, no bus)."""

from __future__ import annotations

from lwfm_bus import JobDefn, JobState
from lwfm_bus._pipeline._again import attempt_id, run_again
from lwfm_bus._pipeline._plan import AfterJobs, OnData, Plan, PlannedJob, Root


def _job(job_id: str, start: Root | AfterJobs | OnData) -> PlannedJob:
    return PlannedJob(job_id, f"p:{job_id}", job_id, "local", JobDefn.of(["true"]), start)


def _plan() -> Plan:
    return Plan(
        name="p",
        workflow_id="w",
        jobs=[
            _job("a", Root()),
            _job("b", Root()),
            _job("j", AfterJobs(("a", "b"))),
            _job("each", OnData({"k": 1}, each=True)),
        ],
        finals={"j": ["j"], "a": ["a"]},
        loops=[("a", "j")],
    )


def _trigger(job_id: str) -> str:
    return f"t-{job_id}"


def test_nothing_spent_keeps_the_plan() -> None:
    plan = _plan()
    assert run_again(plan, {"a": JobState.COMPLETE, "b": JobState.RUNNING}, {"t-j": "active"}, _trigger) is plan


def test_a_failed_job_and_what_waited_on_it_get_new_attempts() -> None:
    jobs = {"a": JobState.FAILED, "b": JobState.COMPLETE}
    again = run_again(_plan(), jobs, {"t-j": "expired", "t-each": "cancelled"}, _trigger)
    ids = [j.job_id for j in again.jobs]
    a1, j1 = attempt_id("a", 1), attempt_id("j", 1)
    assert ids == [a1, "b", j1, "each"]  # b completed; a per-arrival job is never renamed
    assert again.jobs[2].start == AfterJobs((a1, "b"))
    assert again.finals == {"j": [j1], "a": [a1]}
    assert again.loops == [(a1, j1)]


def test_attempts_chain_past_every_spent_one() -> None:
    a1, a2 = attempt_id("a", 1), attempt_id("a", 2)
    jobs = {"a": JobState.FAILED, a1: JobState.CANCELLED, "b": JobState.COMPLETE}
    again = run_again(_plan(), jobs, {"t-j": "expired", f"t-{attempt_id('j', 1)}": "cancelled"}, _trigger)
    assert [j.job_id for j in again.jobs][:3] == [a2, "b", attempt_id("j", 2)]
    completed = run_again(_plan(), {**jobs, a2: JobState.COMPLETE}, {}, _trigger)
    assert completed.jobs[0].job_id == a2  # the attempt that completed is followed, not run again


def test_a_job_still_waiting_on_a_renamed_upstream_gets_a_new_trigger() -> None:
    """Its trigger (same id, other upstreams) would be refused as already registered."""
    again = run_again(_plan(), {"a": JobState.FAILED, "b": JobState.COMPLETE}, {"t-j": "active"}, _trigger)
    assert again.jobs[2].job_id == attempt_id("j", 1)
    assert again.jobs[2].start == AfterJobs((attempt_id("a", 1), "b"))
