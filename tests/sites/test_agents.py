"""Jobs run on the bus: durable submission and site agents, as users meet them.

Real processes throughout: ``lwfm-bus up``, ``lwfm-bus agent`` and ``lwfm-bus submit``
run as subprocesses, are killed with real signals, and the nats-server itself is
stopped, killed and restarted.  Every wait is on an event of the bus, a line a process
prints, or a process's exit; the jobs' own records (files they append to) say what
really ran, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus.testing import bus_config_for, start_test_server
from tests._helpers import cli_env, job_events, wait_pid_exit, wait_state, write_sites

CLI = [sys.executable, "-m", "lwfm_bus"]


def _env(**extra: str) -> dict[str, str]:
    env = cli_env()
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def _process(*args: str, ready: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running CLI process, yielded once its stderr says ``ready``; stopped (SIGTERM) after."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    seen: list[str] = []

    async def until_ready() -> None:
        while line := (await proc.stderr.readline()).decode():  # type: ignore[union-attr]
            seen.append(line)
            if ready in line:
                return
        raise AssertionError(f"{args} exited before it was ready: {''.join(seen)}")

    try:
        await asyncio.wait_for(until_ready(), 60)
        drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
            sys.stderr.write(f"--- {' '.join(args)}:\n" + "".join(seen) + (await drain).decode(errors="replace"))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _agent(
    home: Path, url: str, *, sites_file: Path | None = None, ack_wait: float | None = None
) -> contextlib.AbstractAsyncContextManager[asyncio.subprocess.Process]:
    env = _env(LWFM_BUS_URL=url)
    if sites_file is not None:
        env["LWFM_BUS_SITES"] = str(sites_file)
    if ack_wait is not None:
        env["LWFM_BUS_AGENT_ACK_WAIT"] = str(ack_wait)
    return _process("--home", str(home), "agent", "--site", "local", ready="agent for local", env=env)


# A job that records its own start and end (with the pid of the agent that launched
# it), waiting in between for a file to appear: the jobs' records say what really ran.
_RECORDED = (
    'echo "start $LWFM_JOB_ID $LWFM_LAUNCHER_PID $(date +%s%N)" >> "$1"; '
    'while [ ! -e "$2" ]; do sleep 0.02; done; '
    'echo "end $LWFM_JOB_ID $LWFM_LAUNCHER_PID $(date +%s%N)" >> "$1"'
)


def _recorded(log: Path, go: Path) -> lb.JobDefn:
    return lb.JobDefn.of(["/bin/sh", "-c", _RECORDED, "recorded", str(log), str(go)])


def _records(log: Path) -> list[tuple[str, str, str, int]]:
    rows = []
    for line in log.read_text().splitlines():
        what, job, agent, t = line.split()
        rows.append((what, job, agent, int(t)))
    return rows


def _most_at_once(rows: list[tuple[str, str, str, int]]) -> int:
    """The largest number of jobs between their start and end records at one instant."""
    moments = sorted((t, 1 if what == "start" else -1) for what, _, _, t in rows)
    running = most = 0
    for _, step in moments:
        running += step
        most = max(most, running)
    return most


# --------------------------------------------------------------------- submit, then walk away


async def test_a_job_submitted_by_a_process_that_exits_runs_under_up(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    async with _process("--home", str(home), "up", ready="up at", env=_env()):
        submit = await asyncio.create_subprocess_exec(
            *CLI, "--home", str(home), "submit", "--", "/bin/sh", "-c", f"echo ran > {out}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(submit.communicate(), 60)
        assert submit.returncode == 0, stderr
        assert b"no agent" not in stderr
        job_id = stdout.decode().strip()
        async with lb.connect(lb.BusConfig(home=home, autostart="off")) as bus:  # the submitter is gone
            status = await bus.wait(job_id, timeout=30)
    assert status.state is JobState.COMPLETE
    assert out.read_text() == "ran\n"


_SYNC_SUBMIT = """
import sys
from lwfm_bus import make_job
job = make_job(["/bin/sh", "-c", "echo ran > " + sys.argv[1]])
job.submit()
print(job.job_id)
"""


async def test_a_plain_script_that_ends_at_submit_runs_its_job_under_up(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    async with _process("--home", str(home), "up", ready="up at", env=_env()):
        script = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SYNC_SUBMIT, str(out), stdout=asyncio.subprocess.PIPE,
            env=_env(LWFM_BUS_HOME=str(home)),
        )  # fmt: skip
        stdout, _ = await asyncio.wait_for(script.communicate(), 60)
        assert script.returncode == 0
        async with lb.connect(lb.BusConfig(home=home, autostart="off")) as bus:
            status = await bus.wait(stdout.decode().strip(), timeout=30)
    assert status.state is JobState.COMPLETE
    assert out.read_text() == "ran\n"


# --------------------------------------------------------------------- no agent


async def test_without_an_agent_submit_says_so_and_the_job_runs_when_one_starts(
    bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    submit = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(bus_config.home), "submit", "--", "/bin/sh", "-c", f"echo ran > {out}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_env(LWFM_BUS_URL=bus_config.servers[0]),
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(submit.communicate(), 60)
    assert submit.returncode == 0
    assert b"no agent serves site 'local'" in stderr
    assert b"lwfm-bus agent --site local" in stderr
    job_id = stdout.decode().strip()

    async with lb.connect(bus_config.model_copy(update={"agents": ()})) as bus:
        record = await bus.status(job_id)
        assert (record.state, record.native_state) == (JobState.PENDING, "no agent")
        status_cli = await asyncio.create_subprocess_exec(
            *CLI, "--home", str(bus_config.home), "status", job_id, stdout=asyncio.subprocess.PIPE,
            env=_env(LWFM_BUS_URL=bus_config.servers[0]),
        )  # fmt: skip
        shown, _ = await asyncio.wait_for(status_cli.communicate(), 60)
        assert b"PENDING" in shown and b"no agent" in shown
        assert not out.exists()

        async with _agent(bus_config.home, bus_config.servers[0]):
            status = await bus.wait(job_id, timeout=30)
    assert status.state is JobState.COMPLETE
    assert out.read_text() == "ran\n"


# --------------------------------------------------------------------- one site, several agents


async def test_two_agents_share_a_site_and_its_concurrency_limit(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    sites = write_sites(tmp_path / "sites.toml", {"local": {"max_concurrent": 2}})
    log, go = tmp_path / "records", tmp_path / "go"
    go.touch()  # the jobs do not wait: they only record themselves
    defn = lb.JobDefn.of(
        [
            "/bin/sh",
            "-c",
            _RECORDED.replace('while [ ! -e "$2" ]; do sleep 0.02; done', "sleep 0.1"),
            "r",
            str(log),
            str(go),
        ]
    )
    client = bus_config.model_copy(update={"agents": (), "sites_file": sites})
    async with lb.connect(client) as bus:
        async with _agent(bus_config.home, bus_config.servers[0], sites_file=sites) as first:
            async with _agent(bus_config.home, bus_config.servers[0], sites_file=sites) as second:
                jobs = [await bus.submit(defn) for _ in range(50)]
                finals = await asyncio.gather(*(job.wait(timeout=120) for job in jobs))
                agents = {first.pid, second.pid}
    assert all(f.state is JobState.COMPLETE for f in finals)
    rows = _records(log)
    assert sorted(job for what, job, _, _ in rows if what == "start") == sorted(j.job_id for j in jobs)
    assert _most_at_once(rows) <= 2
    ran_by = {agent for _, _, agent, _ in rows}
    assert ran_by == {str(pid) for pid in agents}, "both agents did work"


async def test_an_agent_killed_with_running_and_queued_jobs_leaves_each_to_run_once(
    bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    sites = write_sites(tmp_path / "sites.toml", {"local": {"max_concurrent": 5}})
    log, go = tmp_path / "records", tmp_path / "go"
    client = bus_config.model_copy(update={"agents": (), "sites_file": sites})
    async with lb.connect(client) as bus:
        async with _agent(bus_config.home, bus_config.servers[0], sites_file=sites, ack_wait=2) as doomed:
            jobs = [await bus.submit(_recorded(log, go)) for _ in range(15)]
            for job in jobs[:5]:
                await wait_state(bus, job.job_id, JobState.RUNNING)
            doomed.kill()  # SIGKILL: no cleanup of any kind
            await doomed.wait()
        # At most the site's limit ran under the first agent (a job reported RUNNING may not have
        # written its start record yet: the jobs outlive the agent and write it anyway).
        assert len([r for r in _records(log) if r[0] == "start"]) <= 5
        async with _agent(bus_config.home, bus_config.servers[0], sites_file=sites, ack_wait=2):
            go.touch()
            finals = await asyncio.gather(*(job.wait(timeout=120) for job in jobs))
        assert all(f.state is JobState.COMPLETE for f in finals), finals
        starts = [job for what, job, _, _ in _records(log) if what == "start"]
        assert sorted(starts) == sorted(j.job_id for j in jobs), "every job ran exactly once"
        for job in jobs:
            terminal = [e.state for e in await job_events(bus, job.job_id) if e.state.is_terminal]
            assert terminal == [JobState.COMPLETE]


# --------------------------------------------------------------------- the server stalls, dies, comes back


@pytest.mark.slow
async def test_reports_survive_a_stalled_then_killed_server_and_a_join_over_them_fires(tmp_path: Path) -> None:
    store, home = tmp_path / "nats", tmp_path / "home"
    log, go, joined = tmp_path / "records", tmp_path / "go", tmp_path / "joined"
    server = start_test_server(store)
    await server.__aenter__()
    try:
        url = server.url
        port = int(url.rsplit(":", 1)[1])
        sites = write_sites(tmp_path / "sites.toml", {"local": {"max_concurrent": 4}})
        config = bus_config_for(server, home, agents=(), sites_file=sites)
        async with lb.connect(config) as bus:
            ups = [lb.new_id() for _ in range(4)]
            trigger = await bus.set_job_trigger(
                lb.JobDefn.of(["/bin/sh", "-c", f"echo joined > {joined}"]), ups, job_id=lb.new_id()
            )
            assert trigger.downstream.job_id is not None
            engine_env = _env(LWFM_BUS_URL=url)
            async with (
                _agent(home, url, sites_file=sites),
                _process("--home", str(home), "engine", ready="ready (", env=engine_env),
            ):
                for job_id in ups:
                    await bus.submit(_recorded(log, go), job_id=job_id)
                pids = [int((await wait_state(bus, job_id, JobState.RUNNING)).native_id or 0) for job_id in ups]
                os.kill(server.pid, signal.SIGSTOP)  # the server stalls ...
                try:
                    go.touch()  # ... while every job ends: their reports cannot be acknowledged
                    for pid in pids:
                        await wait_pid_exit(pid)  # the kernel says each job's process is gone
                    assert len([r for r in _records(log) if r[0] == "end"]) == 4
                finally:
                    os.kill(server.pid, signal.SIGKILL)  # ... and dies (SIGKILL ends a stopped process too)
                await wait_pid_exit(server.pid)
                await server.__aexit__(None, None, None)
                server = lb.EmbeddedServer(lb.EmbeddedServerConfig(port=port), store / "jetstream", name="lwfm-test")
                await server.__aenter__()  # back, on the same store and port
                async with lb.connect(config) as after:
                    for job_id in ups:
                        assert (await after.wait(job_id, timeout=60)).state is JobState.COMPLETE
                    final = await after.wait(trigger.downstream.job_id, timeout=60)
        assert final.state is JobState.COMPLETE
        assert joined.read_text() == "joined\n"
    finally:
        await server.__aexit__(None, None, None)


# --------------------------------------------------------------------- the seeds' 3b and 3c, as written

_SEED_3B = """
import sys
from lwfm_bus import make_job, set_job_trigger
out = sys.argv[1]
jobA = make_job(["/bin/sh", "-c", "echo A >> " + out])
jobB = make_job(["/bin/sh", "-c", "echo B >> " + out])
set_job_trigger(jobB, jobA)
print(jobB.job_id, flush=True)
jobA.submit()
"""

_SEED_3C = """
import sys
from lwfm_bus import make_job, set_job_trigger
out = sys.argv[1]
jobA1 = make_job(["/bin/sh", "-c", "echo A1 >> " + out])
jobA2 = make_job(["/bin/sh", "-c", "echo A2 >> " + out])
jobB = make_job(["/bin/sh", "-c", "echo B >> " + out])
set_job_trigger(jobB, [jobA1, jobA2])
print(jobB.job_id, flush=True)
jobA1.submit()
jobA2.submit()
"""


async def _run_seed(script: str, home: Path, out: Path) -> tuple[str, str]:
    """Run a seed script to its end (it ends right after submit()); its B job id and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_env(LWFM_BUS_HOME=str(home)),
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, stderr.decode()
    return stdout.decode().strip(), stderr.decode()


@pytest.mark.parametrize(("script", "lines"), [(_SEED_3B, ["A", "B"]), (_SEED_3C, ["A1", "A2", "B"])], ids=["3b", "3c"])
async def test_seed_scripts_that_end_at_submit_complete_their_chain_under_up(
    tmp_path: Path, script: str, lines: list[str]
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    async with _process("--home", str(home), "up", ready="up at", env=_env()):
        b_id, stderr = await _run_seed(script, home, out)
        assert "in the background" not in stderr  # up was running: nothing else was started
        async with lb.connect(lb.BusConfig(home=home, autostart="off")) as bus:
            status = await bus.wait(b_id, timeout=60)
    assert status.state is JobState.COMPLETE
    assert sorted(out.read_text().split()) == lines and out.read_text().split()[-1] == "B"


@pytest.mark.parametrize(("script", "lines"), [(_SEED_3B, ["A", "B"]), (_SEED_3C, ["A1", "A2", "B"])], ids=["3b", "3c"])
async def test_seed_scripts_that_end_at_submit_start_the_bus_in_the_background(
    tmp_path: Path, script: str, lines: list[str]
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    b_id, stderr = await _run_seed(script, home, out)  # nothing runs for this home
    assert "started the bus in the background" in stderr and "lwfm-bus down" in stderr
    async with lb.connect(lb.BusConfig(home=home, autostart="off")) as bus:  # the script is gone; the bus is not
        status = await bus.wait(b_id, timeout=60)
    assert status.state is JobState.COMPLETE
    assert sorted(out.read_text().split()) == lines and out.read_text().split()[-1] == "B"

    down = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(home), "down", stderr=asyncio.subprocess.PIPE, env=_env()
    )
    _, said = await asyncio.wait_for(down.communicate(), 60)
    assert down.returncode == 0 and b"stopped the bus" in said
    again = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(home), "down", stderr=asyncio.subprocess.PIPE, env=_env()
    )
    _, said = await asyncio.wait_for(again.communicate(), 60)
    assert b"nothing is running" in said


# --------------------------------------------------------------------- review findings


async def test_an_agent_in_another_home_never_starts_a_job_launched_elsewhere(
    bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    """Agents of one site that do not share a state directory cannot adopt each other's jobs:
    the second one must not start the job again; the job's end comes from the bus."""
    log, go = tmp_path / "records", tmp_path / "go"
    client = bus_config.model_copy(update={"agents": ()})
    async with lb.connect(client) as bus:
        async with _agent(bus_config.home, bus_config.servers[0], ack_wait=2) as first:
            job = await bus.submit(_recorded(log, go))
            await wait_state(bus, job.job_id, JobState.RUNNING)
            first.kill()
            await first.wait()
        async with _agent(tmp_path / "another-home", bus_config.servers[0], ack_wait=2) as second:
            # it is handed the submission once the ack wait passes ...
            await wait_state(bus, job.job_id, JobState.RUNNING)
            go.touch()  # ... and the job, still running under the dead agent's home, ends
            final = await job.wait(timeout=60)  # reported by the job's own orphan reporter
            assert second.returncode is None
    assert final.state is JobState.COMPLETE
    assert [r[0] for r in _records(log)] == ["start", "end"], "the job ran exactly once"


async def test_a_job_runs_in_the_directory_it_was_submitted_from(tmp_path: Path) -> None:
    home, where = tmp_path / "home", tmp_path / "project"
    where.mkdir()
    async with _process("--home", str(home), "up", ready="up at", env=_env()):  # up runs from elsewhere
        submit = await asyncio.create_subprocess_exec(
            *CLI, "--home", str(home), "submit", "--wait", "--", "/bin/sh", "-c", "pwd > here.txt",
            cwd=where, stdout=asyncio.subprocess.PIPE, env=_env(),
        )  # fmt: skip
        await asyncio.wait_for(submit.communicate(), 60)
        assert submit.returncode == 0
    assert (where / "here.txt").read_text().strip() == str(where)


async def test_a_relative_home_starts_the_background_bus_in_the_right_place(tmp_path: Path) -> None:
    out = tmp_path / "out"
    submit = await asyncio.create_subprocess_exec(
        *CLI, "--home", "rel-home", "submit", "--wait", "--", "/bin/sh", "-c", f"echo ran > {out}",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(submit.communicate(), 90)
    assert submit.returncode == 0, stderr.decode()
    assert out.read_text() == "ran\n"
    assert (tmp_path / "rel-home" / "server.json").exists()
    assert not (tmp_path / "rel-home" / "rel-home").exists()
