"""Waiting on a job a trigger was to start ends when that can no longer happen (issue 17, item 1).

A job whose trigger expired, failed or was cancelled never runs; ``bus.wait``,
``SyncJob.wait`` and ``lwfm-bus wait`` say so, naming the trigger and why, instead of
waiting for ever.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from tests._helpers import cli_env

_ENGINE = lb.EngineConfig(ack_wait_s=5, dispatch_attempts=1, dispatch_backoff_s=0.05)


async def _ended(bus: lb.Bus, job: str) -> None:
    await bus.publish(lb.make_event(lb.JobStatus(job_id=job, site="local", state=JobState.FAILED), source="/t"))


async def test_wait_ends_when_the_upstream_fails_and_the_trigger_expires(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        up, down = lb.new_id(), lb.new_id()
        trigger = await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down)
        waiting = asyncio.ensure_future(bus.wait(down, timeout=60))  # waiting before the trigger ends
        await _ended(bus, up)
        with pytest.raises(lb.JobWillNotRunError) as caught:
            await waiting
        assert (caught.value.trigger_id, caught.value.state) == (trigger.trigger_id, "expired")
        assert up in str(caught.value) and "FAILED" in str(caught.value)
        with pytest.raises(lb.JobWillNotRunError, match="expired"):
            await bus.wait(down, timeout=60)  # and after it ended


async def test_wait_ends_when_the_trigger_is_cancelled(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        up, down = lb.new_id(), lb.new_id()
        trigger = await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down)
        waiting = asyncio.ensure_future(bus.wait(down, timeout=60))
        await bus.cancel_trigger(trigger.trigger_id, reason="not needed after all")
        with pytest.raises(lb.JobWillNotRunError, match="cancelled: not needed after all"):
            await waiting


async def test_a_trigger_that_fails_to_dispatch_ends_the_wait_with_the_job_failed(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        up, down = lb.new_id(), lb.new_id()
        await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down, site="no-such-site")
        await bus.publish(lb.make_event(lb.JobStatus(job_id=up, site="local", state=JobState.COMPLETE), source="/t"))
        final = await bus.wait(down, timeout=60)  # the job is reported FAILED, with why
        assert final.state is JobState.FAILED and "no-such-site" in (final.info or final.native_info or "")


async def test_a_join_fallback_is_waited_for_not_refused(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        ups, down = [lb.new_id(), lb.new_id()], lb.new_id()
        trigger = await bus.set_job_trigger(
            lb.JobDefn.of(["true"]), ups, job_id=down, fallback=lb.JobDefn.of(["true"]), fallback_site="local"
        )
        waiting = asyncio.ensure_future(bus.wait(down, timeout=60))
        await _ended(bus, ups[0])  # "all" can no longer hold: the join expires and starts its fallback
        with pytest.raises(lb.JobWillNotRunError, match="expired"):
            await waiting
        record = await bus.trigger(trigger.trigger_id)
        assert record is not None and record.last_job_id is not None  # the fallback's job
        assert (await bus.wait(record.last_job_id, timeout=60)).state is JobState.COMPLETE


async def test_a_plain_job_is_still_waited_for(bus: lb.Bus) -> None:
    job = await bus.submit(lb.JobDefn.of(["true"]))
    assert (await job.wait(timeout=60)).state is JobState.COMPLETE


async def test_wait_returns_when_a_losing_watch_swallows_its_cancellation(
    bus: lb.Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's end is heard; the watches that lost must stop, even one that ignores a cancel.

    On Python 3.11 nats-py awaits replies inside ``asyncio.wait_for``, which returns the
    reply instead of raising when the cancel lands as the reply arrives: a watch cancelled
    once then waited for ever, and so did ``wait()`` after the job had ended (two engines'
    50-trigger test, about one run in six).  That race cannot be produced on demand, so
    this fake trigger watch swallows the first cancel as nats-py does.  It failed before
    the fix (JobTimeoutError).
    """
    swallowed = asyncio.Event()

    async def swallows_one_cancel(self: lb.Bus, job_id: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # lost, as in nats-py's wait_for
        await asyncio.Event().wait()

    monkeypatch.setattr(lb.Bus, "_never_runs", swallows_one_cancel)
    job = lb.new_id()
    await bus.publish(lb.make_event(lb.JobStatus(job_id=job, site="local", state=JobState.COMPLETE), source="/t"))
    final = await bus.wait(job, timeout=30)
    assert final.state is JobState.COMPLETE
    assert swallowed.is_set()


@pytest.fixture
def laptop(tmp_path: Path) -> Iterator[lb.BusConfig]:
    config = lb.BusConfig(home=tmp_path / "home")
    try:
        yield config
    finally:
        lb.sync_close()


def test_the_sync_wait_ends_too(laptop: lb.BusConfig) -> None:
    job_a = lb.make_job([sys.executable, "-c", "raise SystemExit(3)"], config=laptop)
    job_b = lb.make_job(["true"], config=laptop)
    lb.set_job_trigger(job_b, job_a)
    job_a.submit()
    with pytest.raises(lb.JobWillNotRunError, match="expired"):
        job_b.wait(timeout=60)


def test_a_job_id_can_be_chosen_in_advance(laptop: lb.BusConfig) -> None:
    job = lb.make_job(["true"], config=laptop, job_id="my-job-1")
    assert job.job_id == "my-job-1"
    assert job.submit().wait(timeout=60).state is JobState.COMPLETE
    with pytest.raises(ValueError, match="job id"):
        lb.make_job(["true"], config=laptop, job_id="no.dots")


async def test_the_cli_wait_ends_in_one_line(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    env = cli_env()
    cli = [sys.executable, "-m", "lwfm_bus", "--home", str(bus_config.home), "--url", bus_config.servers[0]]
    async with lb.serve_engine(bus, _ENGINE):
        up, down = lb.new_id(), lb.new_id()
        trigger = await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down)
        proc = await asyncio.create_subprocess_exec(
            *cli, "wait", down, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        await _ended(bus, up)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and trigger.trigger_id in lines[0] and "will never run" in lines[0], err
    mine = await asyncio.create_subprocess_exec(
        *cli, "submit", "--job-id", "chosen-1", "--wait", "--", "true",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(mine.communicate(), 60)
    assert mine.returncode == 0, err
    assert out.decode().splitlines() == ["chosen-1", "COMPLETE exit=0"]
