"""A time limit ends a local job: SIGTERM, SIGKILL after the grace, FAILED with native state TIMEOUT.

Issue 20, item 2: limits were enforced on Slurm only.  The limit is a deadline written
beside the job's pid, so an agent that adopts the job after a restart enforces it too.
Real processes and real signals throughout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus import JobState
from tests._helpers import run_cli, wait_state, write_sites
from tests.sites.test_agents import _agent

_WAIT_S = 60


def _limited(argv: list[str], limit_s: int) -> lb.JobDefn:
    return lb.JobDefn.of(argv).model_copy(update={"resources": lb.Resources(time_limit_s=limit_s)})


async def test_a_job_over_its_time_limit_fails_with_timeout(bus: lb.Bus) -> None:
    job = await bus.submit(_limited(["sleep", "120"], 1))
    final = await bus.wait(job.job_id, timeout=_WAIT_S)
    assert final.state is JobState.FAILED
    assert final.native_state == "TIMEOUT"
    assert final.native_info is not None and "time limit of 1s" in final.native_info


async def test_a_job_within_its_limit_completes(bus: lb.Bus) -> None:
    job = await bus.submit(_limited(["true"], 60))
    assert (await bus.wait(job.job_id, timeout=_WAIT_S)).state is JobState.COMPLETE


async def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    sites = write_sites(tmp_path / "sites.toml", {"local": {"kill_grace_s": 0.5}})
    pidfile = tmp_path / "pid"
    stubborn = ["/bin/sh", "-c", f'trap "" TERM; echo $$ > {pidfile}; while :; do sleep 0.2; done']
    async with lb.connect(bus_config.model_copy(update={"sites_file": sites})) as bus:
        job = await bus.submit(_limited(stubborn, 1))
        final = await bus.wait(job.job_id, timeout=_WAIT_S)
    assert (final.state, final.native_state) == (JobState.FAILED, "TIMEOUT")
    pid = int(pidfile.read_text())
    if _running(pid):  # pragma: no cover - the failure this test is for
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"the job's process {pid} outlived its time limit")


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a while for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_an_adopting_agent_enforces_the_limit(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    """The agent that started the job is killed; the one that adopts it ends the job at its deadline."""
    client = bus_config.model_copy(update={"agents": ()})
    async with lb.connect(client) as bus:
        async with _agent(bus_config.home, bus_config.servers[0]) as doomed:
            job = await bus.submit(_limited([sys.executable, "-c", "import time; time.sleep(120)"], 4))
            await wait_state(bus, job.job_id, JobState.RUNNING)
            doomed.kill()
            await doomed.wait()
        async with _agent(bus_config.home, bus_config.servers[0]):
            final = await bus.wait(job.job_id, timeout=_WAIT_S)
    assert (final.state, final.native_state) == (JobState.FAILED, "TIMEOUT")


async def test_cancel_kills_a_command_that_ignores_sigterm(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    """The wrapper dies of the SIGTERM, its command does not: the end of the wrapper is not the end
    of the job.  Before, cancel stopped waiting when the wrapper ended and never sent SIGKILL."""
    sites = write_sites(tmp_path / "sites.toml", {"local": {"kill_grace_s": 0.5}})
    pidfile = tmp_path / "pid"
    stubborn = ["/bin/sh", "-c", f'trap "" TERM; echo $$ > {pidfile}.part; mv {pidfile}.part {pidfile}; '
                "while :; do sleep 0.2; done"]  # fmt: skip
    async with lb.connect(bus_config.model_copy(update={"sites_file": sites})) as bus:
        job = await bus.submit(lb.JobDefn.of(stubborn))
        await wait_state(bus, job.job_id, JobState.RUNNING)
        while not pidfile.exists():  # noqa: ASYNC110 - the job writes it just after it starts
            await asyncio.sleep(0.02)
        final = await bus.cancel(job.job_id, wait_s=_WAIT_S)
    assert final is not None and final.state is JobState.CANCELLED
    pid = int(pidfile.read_text())
    if _running(pid):  # pragma: no cover - the failure this test is for
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"the cancelled job's process {pid} still runs")


async def test_submit_time_limit_from_the_shell(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    """'submit --time-limit S --wait' ends the job and says why in its one line; a bad limit is one line, exit 2."""

    async def run(*args: str) -> tuple[int, str, str]:
        return await run_cli(bus_config, *args, timeout=_WAIT_S)

    code, out, _ = await run("submit", "--time-limit", "1", "--wait", "--", "sleep", "120")
    assert code == 1
    assert out.splitlines()[-1].startswith("FAILED exit=-15 (TIMEOUT: time limit of 1s reached")
    code, out, err = await run("submit", "--time-limit", "0", "--", "true")
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        "lwfm-bus submit: error: --time-limit: Input should be greater than or equal to 1"
    ]
