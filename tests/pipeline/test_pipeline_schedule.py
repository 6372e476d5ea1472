"""A pipeline's top-level ``schedule:``: ``lwfm-bus run`` registers it, each tick is a new run.

Real processes all the way: the CLI registers the schedule and returns; an engine fires
each tick; the tick's job is ``lwfm-bus run FILE --now`` in its own process, a client of
the test's bus, whose step is run by the test bus's agent.  Nothing sleeps: the test
waits on the tick jobs, whose ids are derived from the trigger and the tick.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus._ids import derived_id
from lwfm_bus._triggers import tick_key

_ENGINE = lb.EngineConfig(ack_wait_s=5, dispatch_backoff_s=0.05)


async def _cli(bus: lb.Bus, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lwfm_bus", "--url", bus.config.servers[0], "--home", str(bus.config.home), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_scheduled_pipeline_starts_a_new_run_at_each_tick(bus: lb.Bus, tmp_path: Path) -> None:
    (tmp_path / "stamp.py").write_text("open('stamps', 'a').write('ran\\n')\n")
    start = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    end = start + timedelta(seconds=1)
    file = tmp_path / "ticking.yaml"
    file.write_text(
        "pipeline: 1\n"
        "name: ticking\n"
        f"schedule: {{interval_s: 1, start: '{start.isoformat()}', end: '{end.isoformat()}', catchup: true}}\n"
        "steps:\n"
        "  stamp:\n"
        f"    run: {sys.executable} stamp.py\n"
    )
    rc, out, err = await _cli(bus, "validate", str(file))
    assert rc == 0, out + err
    async with lb.serve_engine(bus, _ENGINE):
        rc, out, err = await _cli(bus, "run", str(file))
        assert rc == 0, err
        assert "registered: each tick starts a new run" in out, out
        trigger_id = out.split("schedule ")[1].split()[0]
        record = await bus.trigger(trigger_id)
        assert record is not None and record.kind == "schedule"
        assert not (tmp_path / "stamps").exists(), "registering runs nothing"
        runs = [derived_id(tick_key(trigger_id, t), "downstream") for t in (start, end)]
        statuses = await asyncio.gather(*(bus.wait(j, timeout=90) for j in runs))
    assert [s.state for s in statuses] == [lb.JobState.COMPLETE] * 2, statuses
    assert (tmp_path / "stamps").read_text().splitlines() == ["ran", "ran"]
    async with bus.replay("lwfm.*.workflow.*._.defined") as history:
        names = [e.data.name async for e in history if isinstance(e, lb.WorkflowDefinedEvent)]
    assert names.count("ticking") == 2, names  # a new run per tick


async def test_a_nested_pipeline_with_a_schedule_is_refused(tmp_path: Path) -> None:
    (tmp_path / "inner.yaml").write_text(
        "pipeline: 1\nname: inner\nschedule: {interval_s: 60}\nsteps:\n  a:\n    run: 'true'\n"
    )
    (tmp_path / "outer.yaml").write_text("pipeline: 1\nname: outer\nsteps:\n  b:\n    pipeline: inner.yaml\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lwfm_bus", "--home", str(tmp_path / "home"), "validate", str(tmp_path / "outer.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out + err
    assert "only the file run has a schedule" in (out + err).decode()


async def test_running_a_scheduled_file_again_does_not_schedule_it_twice(bus: lb.Bus, tmp_path: Path) -> None:
    """The same file and schedule are one trigger; a changed schedule replaces the file's earlier one."""
    start = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)  # nothing ticks during the test
    file = tmp_path / "nightly.yaml"

    def write(interval_s: int) -> None:
        file.write_text(
            "pipeline: 1\nname: nightly\n"
            f"schedule: {{interval_s: {interval_s}, start: '{start.isoformat()}'}}\n"
            'steps:\n  work:\n    run: ["true"]\n'
        )

    write(3600)
    rc, first, err = await _cli(bus, "run", str(file))
    assert rc == 0, err
    rc, again, err = await _cli(bus, "run", str(file))
    assert rc == 0, err
    trigger_id = first.split("schedule ")[1].split()[0]
    assert again.strip() == (
        f"nightly: already scheduled as {trigger_id}, unchanged ('lwfm-bus trigger rm {trigger_id}' withdraws it)"
    )
    write(7200)
    rc, changed, err = await _cli(bus, "run", str(file))
    assert rc == 0, err
    assert f"nightly: schedule {trigger_id} withdrawn (replaced)" in changed
    active = [t for t in await bus.triggers(state="active") if t.kind == "schedule"]
    assert len(active) == 1 and active[0].trigger_id != trigger_id
    old = await bus.trigger(trigger_id)
    assert old is not None and old.state == "cancelled"
