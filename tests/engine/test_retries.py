"""Retries: a failed job runs again as a new attempt, and what waits on it follows the final attempt.

Real jobs on the local site, a real nats-server, an in-process engine.  A job that
must fail a given number of times counts its runs in a file (one line per run), so
the file says how often it really ran.  Every wait is on an event with a timeout.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._identity import bus_env
from lwfm_bus._retry import retry_id
from lwfm_bus._sites._submit import stored_submission
from tests._helpers import cli_env, engine_idle, job_events, run_cli, wait_state

_ENGINE = lb.EngineConfig(ack_wait_s=2, dispatch_backoff_s=0.05)
_QUICK = {"backoff_s": 0.0, "jitter": 0.0}
# Fails (exit code argv[3]) until it has run argv[2] times, then succeeds; one line per run in argv[1].
_FLAKY = (
    "import sys; p = sys.argv[1]; open(p, 'a').write('ran\\n'); "
    "n = len(open(p).read().splitlines()); sys.exit(int(sys.argv[3]) if n <= int(sys.argv[2]) else 0)"
)


def _flaky(counter: Path, failures: int, exit_code: int = 1, **policy: object) -> lb.JobDefn:
    """A job that fails ``failures`` times with ``exit_code``, then completes."""
    return lb.JobDefn(
        argv=(sys.executable, "-c", _FLAKY, str(counter), str(failures), str(exit_code)),
        retry=lb.RetryPolicy.model_validate({**_QUICK, **policy}),
    )


def _runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


# --------------------------------------------------------------------- the policy, as pure functions


def test_the_policy_retries_failed_ends_only_and_within_its_attempts() -> None:
    policy = lb.RetryPolicy(max_attempts=3)
    assert policy.retries(1, JobState.FAILED, "failed", 1)
    assert policy.retries(2, JobState.FAILED, None, None)
    assert not policy.retries(3, JobState.FAILED, "failed", 1), "the third attempt is the last"
    assert not policy.retries(1, JobState.CANCELLED, "cancelled", None), "a cancel is someone's decision"
    assert not policy.retries(1, JobState.COMPLETE, "complete", 0)


def test_the_condition_sees_the_native_state_and_the_exit_code() -> None:
    policy = lb.RetryPolicy(max_attempts=5, when="native_state in ('NODE_FAIL', 'PREEMPTED') or exit_code == 75")
    assert policy.retries(1, JobState.FAILED, "PREEMPTED", None)
    assert policy.retries(1, JobState.FAILED, "failed", 75)
    assert not policy.retries(1, JobState.FAILED, "OUT_OF_MEMORY", 137)
    # A condition that cannot be evaluated for this end (no exit code to compare) is false.
    assert not lb.RetryPolicy(when="exit_code > 1").retries(1, JobState.FAILED, "NODE_FAIL", None)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("exit_cod == 75", "uses exit_cod"),
        ("exit_code ==", "syntax"),
        ("__import__('os')", "only these functions"),
    ],
)
def test_a_bad_condition_is_refused_when_the_policy_is_made(when: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        lb.RetryPolicy(when=when)


def test_the_back_off_grows_is_bounded_and_every_process_draws_the_same_jitter() -> None:
    policy = lb.RetryPolicy(max_attempts=10, backoff_s=10, backoff_factor=2, max_backoff_s=60, jitter=0.2)
    first, second, late = policy.delay_s(1, "a"), policy.delay_s(2, "b"), policy.delay_s(9, "c")
    assert 8 <= first <= 12 and 16 <= second <= 24 and 48 <= late <= 72
    assert policy.delay_s(1, "a") == first, "drawn from the next attempt's id, not a random generator"
    assert len({policy.delay_s(1, str(n)) for n in range(20)}) > 1, "the jitter spreads many jobs"


def test_resources_grow_after_the_native_state_named() -> None:
    policy = lb.RetryPolicy(grow={"OUT_OF_MEMORY": {"memory_mb": 2}, "TIMEOUT": {"time_limit_s": 1.5}})
    asked = lb.Resources(memory_mb=1000, time_limit_s=100)
    assert asked.after(policy, "OUT_OF_MEMORY") == lb.Resources(memory_mb=2000, time_limit_s=100)
    assert asked.after(policy, "timeout") == lb.Resources(memory_mb=1000, time_limit_s=150)
    assert asked.after(policy, "NODE_FAIL") == asked
    assert lb.Resources().after(policy, "OUT_OF_MEMORY") == lb.Resources(), "nothing asked, nothing to grow"


def test_every_reporter_marks_one_end_alike() -> None:
    ctx = lb.JobContext(job_id="j1", retry=lb.RetryPolicy(max_attempts=2, backoff_s=5))
    marks = ctx.attempt_marks(JobState.FAILED, "failed", 1)
    assert marks == ctx.attempt_marks(JobState.FAILED, "failed", 1)
    assert marks["attempt"] == 1 and marks["retry_next"] and marks["retry_delay_s"] > 0
    last = ctx.model_copy(update={"job_id": marks["retry_next"], "attempt": 2, "attempt_of": "j1"})
    assert last.attempt_marks(JobState.FAILED, "failed", 1) == {"attempt": 2, "attempt_of": "j1"}
    assert lb.JobContext(job_id="j2").attempt_marks(JobState.FAILED, "failed", 1) == {}
    # A callback from the job's host rebuilds the same context from the job's environment.
    assert lb.current_job(lb.identity_env(ctx)) == ctx


# --------------------------------------------------------------------- real jobs


async def test_a_failed_job_runs_again_and_wait_returns_the_final_attempt(bus: lb.Bus, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    async with lb.serve_engine(bus, _ENGINE) as engine:
        job = await bus.submit(_flaky(counter, failures=1, max_attempts=3))
        final = await job.wait(timeout=60)
        assert final.state is JobState.COMPLETE, final
        assert (final.attempt, final.attempt_of) == (2, job.job_id)
        assert final.job_id != job.job_id, "each attempt is its own job"
        assert _runs(counter) == 2
        first = [s for s in await job_events(bus, job.job_id) if s.state.is_terminal]
        assert [(s.state, s.retry_next) for s in first] == [(JobState.FAILED, final.job_id)]
        await engine_idle(bus)
        assert engine.stats.retried == 1
    record = await bus.status(final.job_id)
    assert (record.attempt, record.attempt_of) == (2, job.job_id)
    assert (await bus.status(job.job_id)).retry_next == final.job_id


async def test_attempts_end_at_max_attempts_with_the_last_failure(bus: lb.Bus, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    async with lb.serve_engine(bus, _ENGINE):
        job = await bus.submit(_flaky(counter, failures=10, exit_code=3, max_attempts=3))
        final = await job.wait(timeout=60)
        assert (final.state, final.exit_code, final.attempt, final.retry_next) == (JobState.FAILED, 3, 3, None)
        assert _runs(counter) == 3


async def test_the_condition_decides_which_failures_are_retried(bus: lb.Bus, tmp_path: Path) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        when = "exit_code == 75"
        other = await bus.submit(_flaky(tmp_path / "other", failures=1, exit_code=3, max_attempts=3, when=when))
        temp = await bus.submit(_flaky(tmp_path / "temp", failures=1, exit_code=75, max_attempts=3, when=when))
        ended = await asyncio.gather(other.wait(timeout=60), temp.wait(timeout=60))
        assert [(s.state, s.attempt) for s in ended] == [(JobState.FAILED, 1), (JobState.COMPLETE, 2)]
        assert (_runs(tmp_path / "other"), _runs(tmp_path / "temp")) == (1, 2)


async def test_triggers_and_joins_follow_the_final_attempt(bus: lb.Bus, tmp_path: Path) -> None:
    """A failed attempt that is retried neither fires nor rules out what waits on the job."""
    async with lb.serve_engine(bus, _ENGINE):
        x_id, y_id, b_id, c_id, d_id = (lb.new_id() for _ in range(5))
        after_x = await bus.set_job_trigger(lb.JobDefn.of(["true"]), x_id, job_id=b_id)
        on_fail = await bus.set_job_trigger(lb.JobDefn.of(["true"]), x_id, states=JobState.FAILED, job_id=d_id)
        join = await bus.set_job_trigger(lb.JobDefn.of(["true"]), [x_id, y_id], job_id=c_id)
        await bus.submit(lb.JobDefn.of(["true"]), job_id=y_id)
        await bus.submit(_flaky(tmp_path / "x", failures=2, max_attempts=3), job_id=x_id)
        b, c = await asyncio.gather(bus.wait(b_id, timeout=60), bus.wait(c_id, timeout=60))
        assert (b.state, b.parent_ids) == (JobState.COMPLETE, (x_id,))
        assert c.state is JobState.COMPLETE and set(c.parent_ids) == {x_id, y_id}
        assert _runs(tmp_path / "x") == 3
        # The trigger on X FAILED saw the final COMPLETE: it expired, it never fired on a retried end.
        with pytest.raises(lb.JobWillNotRunError):
            await bus.wait(d_id, timeout=60)
        records = [await bus.trigger(t.trigger_id) for t in (after_x, join, on_fail)]
        states = {r.trigger_id: r.state for r in records if r is not None}
        assert states == {after_x.trigger_id: "fired", join.trigger_id: "fired", on_fail.trigger_id: "expired"}

        # Registered after it all happened, a trigger judges the logical job's final end too.
        late = lb.new_id()
        await bus.set_job_trigger(lb.JobDefn.of(["true"]), x_id, job_id=late)
        assert (await bus.wait(late, timeout=60)).state is JobState.COMPLETE


async def test_a_timed_out_attempt_runs_again_with_the_time_the_policy_adds(bus: lb.Bus) -> None:
    policy = {"max_attempts": 2, "when": "native_state == 'TIMEOUT'", "grow": {"TIMEOUT": {"time_limit_s": 4}}}
    async with lb.serve_engine(bus, _ENGINE):
        defn = lb.JobDefn(
            argv=("sleep", "1.5"),
            resources=lb.Resources(time_limit_s=1),
            retry=lb.RetryPolicy.model_validate({**_QUICK, **policy}),
        )
        job = await bus.submit(defn)
        final = await job.wait(timeout=60)
        assert (final.state, final.attempt) == (JobState.COMPLETE, 2), final
        first = (await job_events(bus, job.job_id))[-1]
        assert (first.state, first.native_state) == (JobState.FAILED, "TIMEOUT")
        again = await stored_submission(bus, "local", final.job_id)
        assert again is not None
        assert again.defn.resources.time_limit_s == 4
        assert (again.ctx.attempt, again.ctx.attempt_of) == (2, job.job_id)


async def test_the_next_attempt_waits_out_its_back_off(bus: lb.Bus, tmp_path: Path) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        job = await bus.submit(_flaky(tmp_path / "runs", failures=1, max_attempts=2, backoff_s=1.5, jitter=0.0))
        final = await job.wait(timeout=60)
        assert final.state is JobState.COMPLETE
        failed = next(s for s in await job_events(bus, job.job_id) if s.state is JobState.FAILED)
        assert failed.retry_delay_s == 1.5
        stored = {}
        async with bus.replay(lb.job_filter(job.job_id)) as history, bus.replay(lb.job_filter(final.job_id)) as later:
            async for event in history:
                if isinstance(event, lb.JobStatusEvent) and event.data.state is JobState.FAILED:
                    stored["failed"] = event.time
            async for event in later:
                if isinstance(event, lb.JobStatusEvent) and event.data.state is JobState.READY:
                    stored["ready"] = event.time
        # The next attempt was submitted (READY) no sooner than the back-off after the failure.
        assert (stored["ready"] - stored["failed"]).total_seconds() >= 1.5 - 0.1


async def test_cancelling_the_job_in_its_back_off_ends_it_without_another_run(bus: lb.Bus, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    async with lb.serve_engine(bus, _ENGINE):
        job = await bus.submit(_flaky(counter, failures=5, max_attempts=3, backoff_s=2, jitter=0.0))
        await wait_state(bus, job.job_id, JobState.FAILED)
        final = await bus.cancel(job.job_id, wait_s=60)  # the id the user was given: the logical job
        assert final is not None
        assert (final.state, final.attempt) == (JobState.CANCELLED, 2), final
        assert _runs(counter) == 1, "the second attempt never ran"


async def test_cancelling_the_job_stops_its_running_attempt(bus: lb.Bus, tmp_path: Path) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        marker = tmp_path / "started"
        # The first attempt fails at once; the second runs until it is stopped.
        code = (
            f"import sys, time, pathlib; p = pathlib.Path({str(marker)!r}); n = p.exists(); p.touch(); "
            "time.sleep(60 if n else 0); sys.exit(1)"
        )
        defn = lb.JobDefn(argv=(sys.executable, "-c", code), retry=lb.RetryPolicy(max_attempts=2, **_QUICK))
        job = await bus.submit(defn)
        first = await wait_state(bus, job.job_id, JobState.FAILED)
        assert first.retry_next is not None
        await wait_state(bus, first.retry_next, JobState.RUNNING)
        final = await bus.cancel(job.job_id, wait_s=60)
        assert final is not None
        assert (final.state, final.job_id) == (JobState.CANCELLED, first.retry_next), final


async def test_logs_of_a_retried_job_name_its_next_attempt(
    bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        job = await bus.submit(_flaky(tmp_path / "runs", failures=1, max_attempts=2))
        final = await job.wait(timeout=60)
    code, out, err = await run_cli(bus_config, "logs", job.job_id)
    assert (code, out) == (0, ""), err  # the first attempt printed nothing: its log is its own
    assert f"was run again as job {final.job_id}" in err


async def test_many_jobs_in_their_back_off_hold_up_no_other_trigger(bus: lb.Bus) -> None:
    """A retried end waits out its back-off unacknowledged; on the work consumer (1024 at most in
    flight) 1,100 of them stopped every trigger of the bus for the whole back-off."""
    ids = [lb.new_id() for _ in range(1100)]

    def retried_end(job_id: str) -> lb.Event:
        status = lb.JobStatus(
            job_id=job_id, site="local", state=JobState.FAILED, attempt=1, retry_next=retry_id(job_id, 2),
            retry_delay_s=600.0,
        )  # fmt: skip
        return lb.make_event(status, source="/test", id=f"{job_id}:FAILED")

    async with lb.serve_engine(bus, _ENGINE):
        for start in range(0, len(ids), 100):
            await asyncio.gather(*(bus.publish(retried_end(j)) for j in ids[start : start + 100]))
        a_id, b_id = lb.new_id(), lb.new_id()
        await bus.set_job_trigger(lb.JobDefn.of(["true"]), a_id, job_id=b_id)
        await bus.submit(lb.JobDefn.of(["true"]), job_id=a_id)
        assert (await bus.wait(b_id, timeout=60)).state is JobState.COMPLETE


def test_a_retry_mark_no_policy_could_make_is_refused_at_the_edge() -> None:
    with pytest.raises(ValidationError, match="next attempt"):
        lb.JobStatus(job_id="a", site="local", state=JobState.FAILED, attempt=1, retry_next="victim")
    with pytest.raises(ValidationError, match="FAILED end"):
        lb.JobStatus(job_id="a", site="local", state=JobState.COMPLETE, attempt=1, retry_next=retry_id("a", 2))
    with pytest.raises(ValidationError, match="less than or equal"):
        lb.JobStatus(
            job_id="a", site="local", state=JobState.FAILED, attempt=1, retry_next=retry_id("a", 2), retry_delay_s=1e300
        )


async def test_a_callback_leaves_a_retried_jobs_failed_end_to_the_watcher(
    bus: lb.Bus, bus_config: lb.BusConfig
) -> None:
    """In callback mode the job's wrapper reports its own end, with native state "exited" (it cannot
    see an OUT_OF_MEMORY or a TIMEOUT): for a job with a retry policy that end would decide the retry
    wrongly, so it is left to the site's watcher.  A job without a policy still reports it."""

    async def callback(ctx: lb.JobContext) -> int:
        env = {**cli_env(), **bus_env(bus_config, bus_config.servers[0]), **lb.identity_env(ctx)}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "adapters._callback", "exit", "1", env=env)
        return await asyncio.wait_for(proc.wait(), 60)

    with_policy = lb.JobContext(job_id=lb.new_id(), retry=lb.RetryPolicy(max_attempts=2))
    without = lb.JobContext(job_id=lb.new_id())
    assert await callback(with_policy) == 0
    assert await callback(without) == 0  # published and acknowledged before the process exits
    assert [s.state for s in await job_events(bus, with_policy.job_id)] == []
    assert [s.state for s in await job_events(bus, without.job_id)] == [JobState.FAILED]
