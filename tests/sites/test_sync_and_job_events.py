"""The blocking facade (seed 3a as written) and events published by running jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import lwfm_bus as lb


@pytest.fixture
def sync_config(bus_config: lb.BusConfig) -> Iterator[lb.BusConfig]:
    try:
        yield bus_config
    finally:
        lb.sync_close()


def test_seed_3a_synchronously(sync_config: lb.BusConfig) -> None:
    # The seed's own shape: make, submit, wait -- no asyncio in sight.
    results = []
    for step in ("A", "B", "C"):
        job = lb.make_job([sys.executable, "-c", f"print('{step}')"], config=sync_config)
        job.submit()
        final = job.wait(timeout=60)
        results.append((final.state, job.logs().decode().strip()))
    assert results == [(lb.JobState.COMPLETE, s) for s in "ABC"]


def test_sync_job_errors_are_clear(sync_config: lb.BusConfig) -> None:
    job = lb.make_job("exit 4", config=sync_config)
    with pytest.raises(lb.JobError, match="submit"):
        job.wait()
    job.submit()
    assert job.wait(timeout=60).exit_code == 4
    assert job.status().state is lb.JobState.FAILED
    with pytest.raises(lb.JobError, match="already submitted"):
        job.submit()


async def test_a_job_emits_info_status_and_data_seen_by_an_independent_subscriber(
    bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    out = tmp_path / "result.txt"
    script = (
        f"import lwfm_bus as lb, pathlib; pathlib.Path({str(out)!r}).write_text('42'); "
        "lb.emit_status('RUNNING', 'warming up'); lb.emit_info('half way'); "
        f"lb.emit_data({str(out)!r}, {{'kind': 'answer', 'value': 42}})"
    )
    shell = f"lwfm-bus emit info 'from the CLI' && lwfm-bus emit data {out} --meta kind=cli --meta n=3"
    cli = Path(sys.executable).parent / "lwfm-bus"
    async with lb.connect(bus_config) as observer:  # an independent connection
        wf = await bus.define_workflow("emitters")
        async with observer.subscribe(lb.workflow_filter(wf.workflow_id)) as events:
            job = await bus.submit(lb.JobDefn(argv=(sys.executable, "-c", script)), workflow=wf)
            job2 = await bus.submit(
                lb.JobDefn(shell=shell, env={"PATH": f"{cli.parent}:{os.environ['PATH']}"}), workflow=wf
            )
            assert (await job.wait(timeout=60)).state is lb.JobState.COMPLETE
            assert (await job2.wait(timeout=60)).state is lb.JobState.COMPLETE, (await job2.logs("stderr")).decode()
            seen: list[lb.Event] = []
            while sum(isinstance(e, lb.JobStatusEvent) and e.data.state.is_terminal for e in seen) < 2:
                seen.append(await events.next(timeout=30))
    mine = [e for e in seen if (e.data.job_id if hasattr(e.data, "job_id") else None) == job.job_id]
    infos = [e.data.info for e in mine if isinstance(e, lb.JobStatusEvent) and e.data.info]
    assert "warming up" in infos
    assert "half way" in infos
    data = [e.data for e in mine if isinstance(e, lb.DataEvent)]
    assert len(data) == 1
    assert data[0].metadata == {"kind": "answer", "value": 42}
    assert data[0].size == 2
    assert data[0].checksum is not None
    assert data[0].workflow_id == wf.workflow_id
    cli_data = [e.data for e in seen if isinstance(e, lb.DataEvent) and e.data.job_id == job2.job_id]
    assert [d.metadata for d in cli_data] == [{"kind": "cli", "n": 3}]


def test_a_job_may_not_declare_its_own_end() -> None:
    env = {"LWFM_JOB_ID": "j1", "LWFM_SITE": "local"}
    ctx = lb.current_job(env)
    from lwfm_bus._jobside import status_event

    with pytest.raises(lb.JobError, match="site reports COMPLETE"):
        status_event(ctx, lb.JobState.COMPLETE)
    with pytest.raises(lb.JobError, match="not inside"):
        lb.current_job({})


async def test_an_orphaned_job_reports_its_own_end(bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path) -> None:
    """The launcher is SIGKILLed while its job runs; nobody adopts the job, yet its end is published."""
    go = tmp_path / "GO"
    launcher_code = (
        "import asyncio, sys, lwfm_bus as lb\n"
        "async def main():\n"
        f"    cfg = lb.BusConfig(servers=({bus_config.servers[0]!r},), home={str(tmp_path / 'launcher')!r})\n"
        "    async with lb.connect(cfg) as bus:\n"
        f"        job = await bus.submit(lb.JobDefn(shell='while [ ! -e {go} ]; do sleep 0.05; done; exit 7'))\n"
        "        print(job.job_id, flush=True)\n"
        "        await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    launcher = await asyncio.create_subprocess_exec(sys.executable, "-c", launcher_code, stdout=asyncio.subprocess.PIPE)
    assert launcher.stdout is not None
    job_id = (await asyncio.wait_for(launcher.stdout.readline(), 30)).decode().strip()
    async with bus.subscribe(f"lwfm.*.job.*.{job_id}.*", from_start=True) as events:
        while (await events.next(timeout=30)).data.state is not lb.JobState.RUNNING:  # type: ignore[union-attr]
            pass
        launcher.send_signal(signal.SIGKILL)
        await launcher.wait()
        go.touch()  # the job (in its own session) outlives its launcher and now ends
        final = await bus.wait(job_id, timeout=60)
    assert final.state is lb.JobState.FAILED
    assert final.exit_code == 7
