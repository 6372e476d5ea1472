"""Schedules: ticks that start jobs, each tick once, across replicas, a SIGKILL and downtime.

A real nats-server, real local jobs and (for replicas and the kill) real ``lwfm-bus
engine`` processes.  Every tick's job appends its tick (``LWFM_SCHEDULE_TICK``) to a
file, so the file says how many times each tick really ran.

Nothing sleeps.  "No tick after the end" is proven by stream order: a *sentinel*
schedule whose only tick comes after the end; the work loop of a serial engine judges
the ticks in stream order and one timer announces them in time order, so once the
sentinel has fired, every earlier tick has been judged.  Downtime is a registration
dated in the past (the event's time is when the fact happened): ticks since then were
missed while no engine ran.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

import lwfm_bus as lb
from lwfm_bus._ids import derived_id
from lwfm_bus._triggers import tick_key
from lwfm_bus.testing import hold_connection
from tests.engine.test_engine_processes import _engines

_SERIAL = lb.EngineConfig(ack_wait_s=2, dispatch_backoff_s=0.05, max_inflight=1)
_RECORD_TICK = "import os, sys; open(sys.argv[1], 'a').write(os.environ['LWFM_SCHEDULE_TICK'] + '\\n')"


def _tick_job(counter: Path) -> lb.JobDefn:
    return lb.JobDefn.of([sys.executable, "-c", _RECORD_TICK, str(counter)])


def _ran(counter: Path) -> Counter[datetime]:
    """How many times each tick's job ran."""
    lines = counter.read_text().splitlines() if counter.exists() else []
    return Counter(datetime.fromisoformat(line) for line in lines)


def _second(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(microsecond=0)


async def _register(bus: lb.Bus, trigger: lb.ScheduleTrigger, at: datetime | None = None) -> datetime:
    """Register ``trigger`` (dated ``at``, if given: a registration made while no engine ran); its time."""
    data = lb.TriggerRegistered(trigger_id=trigger.trigger_id, site="local", definition=trigger)
    extra = {"time": at} if at is not None else {}
    event = lb.make_event(data, source="/test", id=f"registered:{trigger.trigger_id}", **extra)
    await bus.publish(event)
    return event.time


def _sentinel(at: datetime, counter: Path) -> lb.ScheduleTrigger:
    """A schedule with one tick, at ``at``."""
    return lb.ScheduleTrigger(
        interval_s=1, start=at, end=at, downstream=lb.Downstream(job=_tick_job(counter)), name="sentinel"
    )


async def _fired_until(bus: lb.Bus, trigger_id: str, sentinel_id: str, timeout: float = 60) -> list[lb.TriggerFired]:
    """The fired events of ``trigger_id`` in the stream once the sentinel has fired."""

    async def scan() -> list[lb.TriggerFired]:
        out: list[lb.TriggerFired] = []
        async with bus.subscribe("lwfm.*.trigger.>", from_start=True) as events:
            async for event in events:
                if isinstance(event, lb.TriggerFiredEvent):
                    if event.data.trigger_id == sentinel_id:
                        await bus.wait(event.data.downstream_job_id or "", timeout=60)  # no job outlives the test
                        return out
                    if event.data.trigger_id == trigger_id:
                        out.append(event.data)
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def _ticks_announced(bus: lb.Bus, trigger_id: str) -> Counter[str]:
    async with bus.replay(f"lwfm.*.trigger.*.{trigger_id}.tick") as history:
        return Counter([e.data.firing_key async for e in history if isinstance(e, lb.TriggerTickEvent)])


async def _all_ran_once(bus: lb.Bus, fired: list[lb.TriggerFired], counter: Path, ticks: list[datetime]) -> None:
    """Each tick fired once, under its key, started the job derived from it, which ran once."""
    keys = [f.firing_key for f in fired]
    assert keys == [tick_key(fired[0].trigger_id, t) for t in ticks], (keys, ticks)
    for f in fired:
        assert f.downstream_job_id == derived_id(f.firing_key, "downstream")
    statuses = await asyncio.gather(*(bus.wait(f.downstream_job_id or "", timeout=60) for f in fired))
    assert [s.state for s in statuses] == [lb.JobState.COMPLETE] * len(fired)
    assert _ran(counter) == Counter(ticks)


# --------------------------------------------------------------------- the model


def test_schedule_model_checks_and_arithmetic() -> None:
    job = lb.Downstream(job=lb.JobDefn.of(["true"]))
    with pytest.raises(ValidationError, match="exactly one of cron and interval_s"):
        lb.ScheduleTrigger(cron="* * * * *", interval_s=5, downstream=job)
    with pytest.raises(ValidationError, match="unknown time zone"):
        lb.ScheduleTrigger(cron="* * * * *", tz="Mars/Olympus", downstream=job)
    with pytest.raises(ValidationError, match="not a cron expression"):
        lb.ScheduleTrigger(cron="61 * * * *", downstream=job)
    with pytest.raises(ValidationError, match=r"drop downstream\.job_id"):
        lb.ScheduleTrigger(interval_s=5, downstream=job.model_copy(update={"job_id": "fixed"}))

    registered = datetime(2026, 3, 28, 22, 30, 5, 700_000, tzinfo=UTC)
    # 09:00 in Paris: 08:00 UTC before the clocks change on 2026-03-29, 07:00 UTC after.
    paris = lb.ScheduleTrigger(cron="0 9 * * *", tz="Europe/Paris", catchup=True, downstream=job)
    assert paris.next_after(registered, registered) == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    days = paris.due(registered, registered + timedelta(days=2), registered)
    assert days == [datetime(2026, 3, 29, 7, tzinfo=UTC), datetime(2026, 3, 30, 7, tzinfo=UTC)]
    latest = paris.model_copy(update={"catchup": False})
    assert latest.due(registered, registered + timedelta(days=2), registered) == days[-1:]

    every = lb.ScheduleTrigger(interval_s=10, catchup=True, end=registered + timedelta(seconds=35), downstream=job)
    assert every.due(registered, registered + timedelta(hours=1), registered) == [
        _second(registered) + timedelta(seconds=s) for s in (10, 20, 30)
    ]
    assert every.next_after(registered + timedelta(seconds=30), registered) is None  # ended
    key = lb.firing_key(every, tick=registered)
    assert key == f"{every.trigger_id}/20260328T223005Z"


# --------------------------------------------------------------------- one engine


async def test_interval_schedule_starts_one_job_per_tick_until_its_end(bus: lb.Bus, tmp_path: Path) -> None:
    counter = tmp_path / "ticks"
    async with lb.serve_engine(bus, _SERIAL):
        end = datetime.now(UTC) + timedelta(seconds=3.5)
        schedule = await bus.set_schedule(_tick_job(counter), interval_s=1, end=end, catchup=True)
        assert isinstance(schedule, lb.ScheduleTrigger)
        sentinel = _sentinel(_second(end) + timedelta(seconds=2), tmp_path / "sentinel")
        await bus.add_trigger(sentinel)
        fired = await _fired_until(bus, schedule.trigger_id, sentinel.trigger_id)

    record = await bus.trigger(schedule.trigger_id)
    assert record is not None and record.kind == "schedule"
    registered = record.registered_at
    ticks = schedule.due(registered, end, registered)
    assert ticks, (registered, end)
    await _all_ran_once(bus, fired, counter, ticks)
    assert await _ticks_announced(bus, schedule.trigger_id) == Counter(f.firing_key for f in fired)
    assert (record.state, record.fired) == ("active", len(ticks))


@pytest.mark.parametrize("catchup", [True, False])
async def test_ticks_missed_while_no_engine_ran_follow_catchup(bus: lb.Bus, tmp_path: Path, catchup: bool) -> None:
    counter = tmp_path / "ticks"
    now = datetime.now(UTC)
    schedule = lb.ScheduleTrigger(
        interval_s=1, end=now, catchup=catchup, downstream=lb.Downstream(job=_tick_job(counter))
    )
    registered = await _register(bus, schedule, at=now - timedelta(seconds=8))  # eight ticks ago; no engine ran
    sentinel = _sentinel(_second(now) + timedelta(seconds=2), tmp_path / "sentinel")
    await bus.add_trigger(sentinel)
    async with lb.serve_engine(bus, _SERIAL):
        fired = await _fired_until(bus, schedule.trigger_id, sentinel.trigger_id)

    missed = [_second(registered) + timedelta(seconds=s) for s in range(1, 9)]
    await _all_ran_once(bus, fired, counter, missed if catchup else missed[-1:])


async def test_a_withdrawn_schedule_stops_ticking(bus: lb.Bus, tmp_path: Path) -> None:
    counter = tmp_path / "ticks"
    async with lb.serve_engine(bus, _SERIAL):
        schedule = await bus.set_schedule(_tick_job(counter), interval_s=1)
        async with bus.subscribe(f"lwfm.*.trigger.*.{schedule.trigger_id}.fired", from_start=True) as events:
            first = await asyncio.wait_for(anext(aiter(events)), 30)
        assert isinstance(first, lb.TriggerFiredEvent)
        await bus.cancel_trigger(schedule.trigger_id, reason="test")
        # The withdrawal is in the stream; a sentinel ticking after it proves no later tick fired.
        cancelled_at = datetime.now(UTC)
        sentinel = _sentinel(_second(cancelled_at) + timedelta(seconds=3), tmp_path / "sentinel")
        await bus.add_trigger(sentinel)
        fired = await _fired_until(bus, schedule.trigger_id, sentinel.trigger_id)
        statuses = await asyncio.gather(*(bus.wait(f.downstream_job_id or "", timeout=60) for f in fired))
    ticks = [_tick_of(f.firing_key) for f in fired]
    assert ticks and max(ticks) <= cancelled_at + timedelta(seconds=1), (ticks, cancelled_at)
    assert {s.state for s in statuses} == {lb.JobState.COMPLETE}
    assert _ran(counter) == Counter(ticks)


# --------------------------------------------------------------------- engine processes


async def test_two_engine_processes_start_each_tick_once(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    counter = tmp_path / "ticks"
    async with (
        hold_connection(bus_config.model_copy(update={"engine": "off"})) as client,
        _engines(bus_config) as engines,
    ):
        await engines.start()
        await engines.start()
        end = datetime.now(UTC) + timedelta(seconds=4.5)
        schedule = await client.set_schedule(_tick_job(counter), interval_s=1, end=end, catchup=True)
        assert isinstance(schedule, lb.ScheduleTrigger)
        registered = await _registered_at(client, schedule.trigger_id)
        ticks = schedule.due(registered, end, registered)
        assert ticks, (registered, end)
        jobs = [derived_id(tick_key(schedule.trigger_id, t), "downstream") for t in ticks]
        statuses = await asyncio.gather(*(client.wait(j, timeout=60) for j in jobs))
        assert {s.state for s in statuses} == {lb.JobState.COMPLETE}
        assert all(e.proc.returncode is None for e in engines.started), "both engines ran to the end"

        async with client.replay(f"lwfm.*.trigger.*.{schedule.trigger_id}.fired") as history:
            fired = [e.data async for e in history if isinstance(e, lb.TriggerFiredEvent)]
        await _all_ran_once(client, sorted(fired, key=lambda f: f.firing_key), counter, ticks)
        assert await _ticks_announced(client, schedule.trigger_id) == Counter(f.firing_key for f in fired)


async def _registered_at(bus: lb.Bus, trigger_id: str) -> datetime:
    """When the trigger was registered: its registration event's time, read from the stream."""
    async with bus.replay(f"lwfm.*.trigger.*.{trigger_id}.registered") as history:
        async for event in history:
            return event.time
    raise AssertionError(f"trigger {trigger_id} is not registered")


async def test_engine_killed_at_a_tick_leaves_each_tick_once(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    counter = tmp_path / "ticks"
    async with (
        hold_connection(bus_config.model_copy(update={"engine": "off"})) as client,
        _engines(bus_config) as engines,
    ):
        # One event judged at a time, so the sentinel proves no later tick (see the module docstring).
        crashing = await engines.start("--crash-at", "after-claim", "--max-inflight", "1")
        end = datetime.now(UTC) + timedelta(seconds=5)
        schedule = await client.set_schedule(_tick_job(counter), interval_s=1, end=end, catchup=False)
        sentinel = _sentinel(_second(end) + timedelta(seconds=2), tmp_path / "sentinel")
        await client.add_trigger(sentinel)
        assert await crashing.exited() == -signal.SIGKILL, crashing.log
        assert "crash point after-claim reached" in crashing.log
        announced = await _ticks_announced(client, schedule.trigger_id)
        assert len(announced) == 1, announced  # the first tick: claimed, then the engine died
        (killed_at,) = announced

        await engines.start("--max-inflight", "1")
        fired = await _fired_until(client, schedule.trigger_id, sentinel.trigger_id)

        keys = Counter(f.firing_key for f in fired)
        assert keys[killed_at] == 1 and set(keys.values()) == {1}, keys  # the dead engine's tick finished, once
        ticks = sorted(_tick_of(k) for k in keys)
        assert max(ticks) <= end
        await _all_ran_once(client, sorted(fired, key=lambda f: f.firing_key), counter, ticks)


def _tick_of(firing_key: str) -> datetime:
    return datetime.strptime(firing_key.rpartition("/")[2], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


# --------------------------------------------------------------------- the command line


async def test_trigger_add_registers_a_schedule_from_json(bus: lb.Bus, tmp_path: Path) -> None:
    counter = tmp_path / "ticks"
    trigger_id = lb.new_id()
    spec = {
        "kind": "schedule",
        "trigger_id": trigger_id,
        "cron": "* * * * * *",  # every second (a sixth field is seconds)
        "tz": "Europe/Paris",
        "downstream": {"job": _tick_job(counter).model_dump(mode="json")},
    }
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(spec))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lwfm_bus", "--url", bus.config.servers[0], "--home", str(bus.config.home),
        "trigger", "add", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == [trigger_id]
    async with lb.serve_engine(bus, _SERIAL):
        async with bus.subscribe(f"lwfm.*.trigger.*.{trigger_id}.fired", from_start=True) as events:
            first = await asyncio.wait_for(anext(aiter(events)), 30)
        await bus.cancel_trigger(trigger_id)
        sentinel = _sentinel(_second(datetime.now(UTC)) + timedelta(seconds=2), tmp_path / "sentinel")
        await bus.add_trigger(sentinel)
        fired = await _fired_until(
            bus, trigger_id, sentinel.trigger_id
        )  # (a next tick may have come before the cancel)
    assert isinstance(first, lb.TriggerFiredEvent) and fired[0] == first.data
    statuses = await asyncio.gather(*(bus.wait(f.downstream_job_id or "", timeout=60) for f in fired))
    assert {s.state for s in statuses} == {lb.JobState.COMPLETE}
    assert _ran(counter) == Counter(_tick_of(f.firing_key) for f in fired)


async def test_bad_schedule_is_refused_by_trigger_add_naming_the_field(bus: lb.Bus, tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"kind": "schedule", "interval_s": 5, "tz": "Nowhere/Else", "downstream": {
        "job": {"argv": ["true"]}}}))  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lwfm_bus", "--url", bus.config.servers[0], "--home", str(bus.config.home),
        "trigger", "add", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert "unknown time zone 'Nowhere/Else'" in err.decode()
