"""The ``slurm`` site against a real single-node Slurm (slurmctld + slurmd + munge).

One cluster serves the whole module (tests/_slurm.py starts it on free loopback ports
with its state under a temporary directory); each test has its own bus and site state.
Every wait is on a job event, with a timeout: the adapter's watcher polls squeue (the
scheduler has no events), the tests never do.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import lwfm_bus as lb
from adapters._slurm_parse import (
    STATES,
    SlurmOutputError,
    canonical,
    parse_sbatch,
    parse_scontrol_exit,
    parse_squeue,
    sbatch_resource_args,
)
from adapters.slurm import SlurmOptions, SlurmSite
from lwfm_bus import JobState
from lwfm_bus.testing import hold_connection
from tests._helpers import cli_env, job_events, site_health, site_health_changes, wait_state, write_sites
from tests.sites._slurm import SlurmCluster, running_slurm
from tests.sites._sshd import SshServer, sshd

__all__ = ["sshd"]  # the fixture, re-exported for pytest

_ENGINE = lb.EngineConfig(ack_wait_s=2, dispatch_backoff_s=0.05)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with running_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _config(bus_config: lb.BusConfig, tmp_path: Path, sites: dict[str, dict[str, object]]) -> lb.BusConfig:
    """Every site of ``sites`` (and local) served by this process's agents."""
    return bus_config.model_copy(update={"sites_file": write_sites(tmp_path / "sites.toml", sites), "agents": ("*",)})


@pytest_asyncio.fixture
async def sbus(bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path) -> AsyncIterator[lb.Bus]:
    """A bus with the site ``hpc``: Slurm commands run here."""
    config = _config(bus_config, tmp_path, {"hpc": {"adapter": "slurm", **slurm.site_options()}})
    async with hold_connection(config) as bus:
        yield bus


async def _slurm_site(bus: lb.Bus, name: str = "hpc") -> SlurmSite:
    """The adapter this process's agent drives (its watcher), else a client's."""
    site = await bus._agent_adapter(name) or await bus.site(name)
    assert isinstance(site, SlurmSite)
    return site


def _scontrol_fields(slurm: SlurmCluster, native: str) -> dict[str, str]:
    line = slurm.run("scontrol", "--oneliner", "show", "job", native).stdout
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


# --------------------------------------------------------------------- outcomes


async def test_completed_failed_cancelled_and_timeout(sbus: lb.Bus, slurm: SlurmCluster) -> None:
    # The TIMEOUT job goes first: it is the slow one (Slurm enforces limits every 30 s).
    late = await sbus.submit(lb.JobDefn.of(["sleep", "300"], resources=lb.Resources(time_limit_s=60)), site="hpc")
    hints = lb.Resources(nodes=1, tasks=1, cpus_per_task=1, memory_mb=64, time_limit_s=550, partition="debug")
    ok = await sbus.submit(
        lb.JobDefn.of('echo "id=$LWFM_JOB_ID site=$LWFM_SITE bus=$LWFM_BUS_URL slurm=$SLURM_JOB_ID"', resources=hints),
        site="hpc",
    )
    bad = await sbus.submit(lb.JobDefn.of("echo oops >&2; exit 3"), site="hpc")
    long = await sbus.submit(lb.JobDefn.of(["sleep", "300"]), site="hpc")

    # The time limit is a whole minute; instead of waiting for it, move the job's end to now:
    # slurmctld's own limit enforcement then times it out at its next check.
    running = await wait_state(sbus, late.job_id, JobState.RUNNING)
    assert running.native_id is not None
    assert _scontrol_fields(slurm, running.native_id)["TimeLimit"] == "00:01:00"
    slurm.run("scontrol", "update", f"JobId={running.native_id}", "EndTime=now")

    # COMPLETED, with the resource hints turned into sbatch options.
    # The site's own PENDING, after sbatch (the submitter's, "queued", comes first and has no Slurm id).
    pending = await wait_state(sbus, ok.job_id, JobState.PENDING, where=lambda e: e.native_id is not None)
    assert pending.native_id is not None and pending.native_id.isdigit()
    fields = _scontrol_fields(slurm, pending.native_id)
    # (Slurm shows a node range, "1-1", while the job still waits for its allocation.)
    assert fields["NumNodes"] in ("1", "1-1")
    assert (fields["Partition"], fields["TimeLimit"]) == ("debug", "00:10:00")
    assert (fields["MinMemoryNode"], fields["CPUs/Task"]) == ("64M", "1")
    done = await ok.wait(timeout=60)
    assert (done.state, done.exit_code, done.native_state, done.native_id) == (
        JobState.COMPLETE,
        0,
        "COMPLETED",
        pending.native_id,
    )
    assert (await ok.logs()).decode() == (
        f"id={ok.job_id} site=hpc bus={sbus.connected_url} slurm={pending.native_id}\n"
    )

    # FAILED, with its exit code.
    failed = await bad.wait(timeout=60)
    assert (failed.state, failed.exit_code, failed.native_state) == (JobState.FAILED, 3, "FAILED")
    assert failed.native_info == "exit code 3"
    assert await bad.logs("stderr") == b"oops\n"

    # CANCELLED: scancel through the site.
    await wait_state(sbus, long.job_id, JobState.RUNNING, timeout=60)
    await long.cancel()
    cancelled = await long.wait(timeout=60)
    assert (cancelled.state, cancelled.native_state) == (JobState.CANCELLED, "CANCELLED")

    # TIMEOUT is a failure in lwfm terms; the native state says which one.
    timed_out = await late.wait(timeout=90)
    assert (timed_out.state, timed_out.native_state) == (JobState.FAILED, "TIMEOUT")
    # (Slurm's SIGTERM may reach the wrapper before or after the job's own command ends: the
    # exit code is either Slurm's signal or the wrapper's record, the state is TIMEOUT either way.)
    assert timed_out.native_info is not None and timed_out.native_info.startswith("time limit reached")
    # A poll may catch Slurm's COMPLETING while it kills the job: FINISHING, just before the end.
    seen = [e.state for e in await job_events(sbus, late.job_id)]
    # (Two PENDINGs: the submitter's, "queued", and Slurm's, with its job id.)
    assert sorted((s for s in seen if s is not JobState.FINISHING), key=lambda s: s.rank) == [
        JobState.READY,
        JobState.PENDING,
        JobState.PENDING,
        JobState.RUNNING,
        JobState.FAILED,
    ]
    assert seen.count(JobState.FINISHING) <= 1 and sorted(seen[:4], key=lambda s: s.rank) == [
        JobState.READY, JobState.PENDING, JobState.PENDING, JobState.RUNNING
    ]  # fmt: skip
    site = await _slurm_site(sbus)
    assert await site.status(lb.JobContext(job_id=ok.job_id, site="hpc", native_id=pending.native_id)) is (
        JobState.COMPLETE
    )
    assert site.watcher.watched() == []


# --------------------------------------------------------------------- A -> B


async def test_a_on_slurm_then_b_on_local_fired_by_the_trigger_engine(sbus: lb.Bus) -> None:
    async with lb.serve_engine(sbus, _ENGINE):
        wf = await sbus.define_workflow("a-slurm-b-local")
        a_id, b_id = lb.new_id(), lb.new_id()
        await sbus.set_job_trigger(lb.JobDefn.of([sys.executable, "-c", "print('B')"]), a_id, job_id=b_id)
        a = await sbus.submit(lb.JobDefn.of(["echo", "A"]), site="hpc", workflow=wf, job_id=a_id)

        a_done = await a.wait(timeout=60)
        assert (a_done.state, a_done.site, a_done.native_state) == (JobState.COMPLETE, "hpc", "COMPLETED")
        b_done = await sbus.wait(b_id, timeout=60)
        assert (b_done.state, b_done.site) == (JobState.COMPLETE, "local")
        assert b_done.parent_ids == (a_id,)
        assert b_done.workflow_id == wf.workflow_id
        assert await sbus.logs(a_id) == b"A\n"
        assert await sbus.logs(b_id) == b"B\n"
        records = {r.job_id: r for r in await sbus.jobs(workflow=wf)}
        assert records[a_id].created_at <= records[b_id].created_at
        # A submit of the same job id again (a retry, a second engine) never reaches sbatch twice.
        site = await _slurm_site(sbus)
        again = await site.submit(lb.JobContext(job_id=a_id, site="hpc"), lb.JobDefn.of(["echo", "again"]))
        assert again == a_done.native_id
        assert await sbus.logs(a_id) == b"A\n"


async def test_a_pipeline_runs_its_steps_on_slurm_through_the_step_runner(sbus: lb.Bus, tmp_path: Path) -> None:
    from lwfm_bus._pipeline import load_pipeline
    from lwfm_bus._pipeline._run import run_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(
        "pipeline: 1\nname: on-slurm\nsite: hpc\nsteps:\n"
        "  make:\n    parallel: 2\n    run: [python3, -c, \"import sys; open(sys.argv[1], 'w').write('x')\","
        ' "{outputs.out}"]\n    outputs: {out: "made-{index}.txt"}\n'
        "  use:\n    after: make\n    run: [cat, made-0.txt, made-1.txt]\n"
    )
    async with lb.serve_engine(sbus, _ENGINE):
        report = await run_pipeline(sbus, load_pipeline(path), lambda _: None)
        if not report.ok:
            logs = [await sbus.logs(r.job_id, "stderr") for r in await sbus.jobs(workflow=report.workflow_id)]
            raise AssertionError(f"{report.failures}: {logs}")
        jobs = {r.name: r for r in await sbus.jobs(workflow=report.workflow_id)}
        assert {j.site for j in jobs.values()} == {"hpc"}
        assert {j.native_state for j in jobs.values()} == {"COMPLETED"}  # Slurm's own word: they ran there
        assert await sbus.logs(jobs["on-slurm:use"].job_id) == b"xx"
        made = await sbus.find({"lwfm_step": "make"})  # the step runner notated the outputs, on the site
        assert sorted(r.location for r in made.records) == [str(tmp_path / f"made-{i}.txt") for i in range(2)]
        assert {r.site for r in made.records} == {"hpc"}


# --------------------------------------------------------------------- arrays


async def test_job_arrays_for_each_input_and_n_times(sbus: lb.Bus) -> None:
    site = await _slurm_site(sbus)
    wf = await sbus.define_workflow("arrays")
    inputs = ["alpha", "two words", "gamma"]
    each = [lb.JobContext(site="hpc", workflow_id=wf.workflow_id, name="each") for _ in inputs]
    natives = await site.submit_array(
        each, lb.JobDefn.of('echo "$LWFM_ARRAY_INDEX:$LWFM_INPUT:$LWFM_JOB_ID"', name="each"), inputs
    )
    array_id = natives[0].split("_")[0]
    assert natives == [f"{array_id}_{i}" for i in range(3)]

    times = [lb.JobContext(site="hpc", workflow_id=wf.workflow_id) for _ in range(2)]
    await site.submit_array(times, lb.JobDefn.of('exit "$LWFM_ARRAY_INDEX"'))

    for i, ctx in enumerate(each):
        status = await sbus.wait(ctx.job_id, timeout=60)
        assert (status.state, status.exit_code, status.native_id) == (JobState.COMPLETE, 0, natives[i])
        assert await sbus.logs(ctx.job_id) == f"{i}:{inputs[i]}:{ctx.job_id}\n".encode()
    first, second = [await sbus.wait(ctx.job_id, timeout=60) for ctx in times]
    assert (first.state, first.exit_code) == (JobState.COMPLETE, 0)
    assert (second.state, second.exit_code, second.native_state) == (JobState.FAILED, 1, "FAILED")
    with pytest.raises(lb.SiteError, match="2 inputs for 1 array elements"):
        await site.submit_array([lb.JobContext(site="hpc")], lb.JobDefn.of(["true"]), ["a", "b"])
    with pytest.raises(lb.SiteError, match="one line of text"):
        await site.submit_array([lb.JobContext(site="hpc")], lb.JobDefn.of(["true"]), ["a\nb"])


# --------------------------------------------------------------------- callback or not


async def test_a_job_that_reaches_the_bus_reports_itself(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    # The watcher would look only once an hour: every event after PENDING comes from the job.
    options = {"adapter": "slurm", **slurm.site_options(callback=True, callback_poll_s=3600)}
    async with lb.connect(_config(bus_config, tmp_path, {"hpc": options})) as bus:
        job = await bus.submit(lb.JobDefn.of(["echo", "self-reported"]), site="hpc")
        status = await job.wait(timeout=60)
        assert (status.state, status.exit_code, status.native_state) == (JobState.COMPLETE, 0, "exited")
        events = await job_events(bus, job.job_id)
        # (PENDING from the submitter, "queued", and from the adapter after sbatch, "SUBMITTED";
        # RUNNING from the job: the adapter's PENDING and RUNNING may come in either order.)
        assert sorted((e.state.rank, e.state, e.native_state or "") for e in events) == [
            (0, JobState.READY, ""),
            (1, JobState.PENDING, "SUBMITTED"),
            (1, JobState.PENDING, "queued"),
            (2, JobState.RUNNING, "running"),
            (4, JobState.COMPLETE, "exited"),
        ]
        from_job = [e for e in events if e.state in (JobState.RUNNING, JobState.COMPLETE)]
        assert len({e.native_id for e in from_job}) == 1 and from_job[0].native_id is not None
        assert (await _slurm_site(bus)).watcher.polls == 0


async def test_a_job_that_ended_while_nobody_watched_is_reported_on_open(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    config = _config(bus_config, tmp_path, {"hpc": {"adapter": "slurm", **slurm.site_options()}})
    go = tmp_path / "go"
    async with lb.connect(config) as bus:
        job = await bus.submit(
            lb.JobDefn.of(["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05; done; exit 4', "j", str(go)]),
            site="hpc",
        )
        running = await wait_state(bus, job.job_id, JobState.RUNNING, timeout=60)
    assert running.native_id is not None
    go.touch()
    # Slurm itself tells when the job has ended: a job depending on it can only run then.
    await asyncio.to_thread(
        slurm.run, "sbatch", "--wait", f"--dependency=afterany:{running.native_id}", "--output=/dev/null", "--wrap=true"
    )
    async with lb.connect(config) as bus:
        await bus.site("hpc")  # opening the site adopts its unfinished jobs and looks at them at once
        status = await bus.wait(job.job_id, timeout=10)
        assert (status.state, status.exit_code, status.native_state) == (JobState.FAILED, 4, "FAILED")


async def test_cancelling_a_job_waiting_in_slurms_queue_scancels_it(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    """PENDING in Slurm's queue is not "not started": the cancel must reach scancel."""
    options = {"adapter": "slurm", **slurm.site_options(sbatch_args=["--begin=now+600"])}  # held in the queue
    async with lb.connect(_config(bus_config, tmp_path, {"hpc": options})) as bus:
        job = await bus.submit(lb.JobDefn.of(["true"]), site="hpc")
        queued = await wait_state(
            bus, job.job_id, JobState.PENDING, timeout=60, where=lambda e: e.native_id is not None
        )
        assert queued.native_id is not None
        final = await bus.cancel(job.job_id, wait_s=60)
        assert final is not None and final.state is JobState.CANCELLED
        assert final.native_state == "CANCELLED"  # said by Slurm, through the agent
        assert _scontrol_fields(slurm, queued.native_id)["JobState"] == "CANCELLED"


# --------------------------------------------------------------------- an agent on the login node


async def test_an_agent_on_the_login_node_runs_the_sites_jobs(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    """The laptop's `up` does not serve ``hpc`` (``served_by_up = false``): an agent on the cluster does."""
    options = {"adapter": "slurm", **slurm.site_options()}
    laptop = bus_config.model_copy(
        update={"sites_file": write_sites(tmp_path / "laptop.toml", {"hpc": {**options, "served_by_up": False}}),
                "agents": ("*",)}
    )  # fmt: skip
    login_sites = write_sites(tmp_path / "login.toml", {"hpc": options})  # as the login node configures it
    env = cli_env()
    env.update(LWFM_BUS_URL=bus_config.servers[0], LWFM_BUS_SITES=str(login_sites))
    async with lb.connect(laptop) as bus:
        assert [spec.name for spec in bus.served_sites()] == ["local"]  # up here serves local only
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lwfm_bus", "--home", str(tmp_path / "login-home"), "agent", "--site", "hpc",
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert agent.stderr is not None
            ready = await asyncio.wait_for(agent.stderr.readline(), 60)
            assert b"agent for hpc" in ready, ready
            job = await bus.submit(lb.JobDefn.of('echo "on $(hostname -s) as $LWFM_SITE"'), site="hpc")
            status = await job.wait(timeout=60)
            assert (status.state, status.native_state) == (JobState.COMPLETE, "COMPLETED")
            assert status.native_id is not None and status.native_id.isdigit()  # a real Slurm job
            assert (tmp_path / "login-home" / "sites" / "hpc" / "work").exists()  # run from the login node's home
        finally:
            agent.terminate()
            await asyncio.wait_for(agent.wait(), 60)


# --------------------------------------------------------------------- over SSH


async def test_slurm_commands_over_the_ssh_connection(
    bus_config: lb.BusConfig, slurm: SlurmCluster, sshd: SshServer, tmp_path: Path
) -> None:
    ssh = sshd.login()
    options = {"adapter": "slurm", **slurm.site_options(ssh=ssh, job_root=f"{sshd.rel_workdir}/slurm")}
    async with lb.connect(_config(bus_config, tmp_path, {"hpc": options})) as bus:
        job = await bus.submit(lb.JobDefn.of('echo "$(id -un) $LWFM_JOB_ID"; exit 2'), site="hpc")
        status = await job.wait(timeout=60)
        assert (status.state, status.exit_code, status.native_state) == (JobState.FAILED, 2, "FAILED")
        assert await job.logs() == f"lwfmtest {job.job_id}\n".encode()  # it ran as the SSH user
        site = await _slurm_site(bus)
        assert site._pool is not None and site._pool.connects == 1
        env_file = sshd.workdir / "slurm" / "jobs" / job.job_id / "env"
        assert env_file.owner() == "lwfmtest" and env_file.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------- strict parsing, end to end


async def test_unexpected_squeue_output_degrades_the_site_and_the_watcher_goes_on(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    """Output the scheduler should not give is the site's trouble (its health says it, with the
    line), not an INFO event on each job (issue 22, item 5); once squeue answers again the site
    is UP, and the same watcher carries the job to its end."""
    # The real Slurm commands, except a squeue that answers something else.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "scancel", "scontrol"):
        real = slurm.run("sh", "-c", f"command -v {name}").stdout.strip()
        (bin_dir / name).symlink_to(real)
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\necho 'JOBID PARTITION NAME USER ST TIME NODES'\n")
    squeue.chmod(0o755)
    go = tmp_path / "go"
    options = {"adapter": "slurm", **slurm.site_options(bin_dir=str(bin_dir))}
    async with lb.connect(_config(bus_config, tmp_path, {"hpc": options})) as bus:
        job = await bus.submit(
            lb.JobDefn.of(["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05; done', "j", str(go)]), site="hpc"
        )
        degraded = await site_health(bus, "hpc", lb.SiteStatus.DEGRADED)
        assert degraded.data.info is not None and "squeue: unexpected line" in degraded.data.info
        assert "JOBID PARTITION" in degraded.data.info
        # The real squeue is back: the site is well again and the same watcher carries on.
        fixed = bin_dir / "squeue.new"
        fixed.symlink_to(slurm.run("sh", "-c", "command -v squeue").stdout.strip())
        fixed.replace(squeue)
        await site_health(bus, "hpc", lb.SiteStatus.UP)
        go.touch()
        status = await job.wait(timeout=60)
        assert (status.state, status.exit_code) == (JobState.COMPLETE, 0)
        assert [e for e in await job_events(bus, job.job_id) if e.state is JobState.INFO] == []
        assert await site_health_changes(bus, "hpc") == [
            lb.SiteStatus.DEGRADED,
            lb.SiteStatus.UP,
        ]  # each change once, not once per poll


async def test_submit_refused_by_sbatch_names_the_command(sbus: lb.Bus) -> None:
    job = await sbus.submit(lb.JobDefn.of(["true"], resources=lb.Resources(partition="nosuch")), site="hpc")
    failed = await job.wait(timeout=60)  # the agent tried (a few times), then reported why
    assert failed.state is JobState.FAILED
    assert failed.native_info is not None
    assert re.search(r"submit failed: .*sbatch exited 1 .*invalid partition", failed.native_info), failed.native_info


async def test_put_and_get_on_a_local_slurm_site_verify_checksums(sbus: lb.Bus, tmp_path: Path) -> None:
    site = await _slurm_site(sbus)
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    shared = tmp_path / "shared"
    shared.mkdir()
    await site.put(source, str(shared / "in.bin"))
    await site.get(str(shared / "in.bin"), tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in shared.iterdir()) == ["in.bin"]  # no temporary left behind
    with pytest.raises(lb.SiteError, match=r"missing\.bin.*No such file"):
        await site.get(str(shared / "missing.bin"), tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


# --------------------------------------------------------------------- parsing (no cluster)


def test_every_slurm_state_maps_to_a_canonical_one() -> None:
    expected = {
        "PENDING": JobState.PENDING,
        "CONFIGURING": JobState.PENDING,
        "RUNNING": JobState.RUNNING,
        "COMPLETING": JobState.FINISHING,
        "COMPLETED": JobState.COMPLETE,
        "FAILED": JobState.FAILED,
        "CANCELLED": JobState.CANCELLED,
        "TIMEOUT": JobState.FAILED,
        "NODE_FAIL": JobState.FAILED,
        "PREEMPTED": JobState.FAILED,
        "OUT_OF_MEMORY": JobState.FAILED,
        "BOOT_FAIL": JobState.FAILED,
        "DEADLINE": JobState.FAILED,
        "SUSPENDED": JobState.RUNNING,
        "REQUEUED": JobState.PENDING,
    }
    for word, state in expected.items():
        mapped = canonical(word)
        assert mapped is not None and mapped[0] is state, word
    assert canonical("CANCELLED by 0") == STATES["CANCELLED"]
    assert canonical("NEW_STATE_FROM_THE_FUTURE") is None


def test_scheduler_output_is_parsed_strictly() -> None:
    assert parse_sbatch("123\n") == "123"
    assert parse_sbatch("123;cluster1\n") == "123"
    for bad in ("", "Submitted batch job 123\n", "12 3\n"):
        with pytest.raises(SlurmOutputError, match="sbatch: unexpected output"):
            parse_sbatch(bad)
    rows = parse_squeue("7|RUNNING|None\n4_1|PENDING|Priority\n\n")
    assert (rows["7"].state, rows["4_1"].reason) == ("RUNNING", "Priority")
    for bad in ("7 RUNNING None\n", "JOBID|STATE|REASON\n", "7|running|x\n", "4_[0-3]|PENDING|None\n"):
        with pytest.raises(SlurmOutputError, match="squeue: unexpected line"):
            parse_squeue(bad)
    record = "JobId=9 JobName=x JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 RunTime=00:00:31\n"
    assert parse_scontrol_exit(record, "9") == (0, 15)
    array = "JobId=12 ArrayJobId=10 ArrayTaskId=2 JobState=FAILED ExitCode=1:0\n"
    assert parse_scontrol_exit(array, "10_2") == (1, 0)
    with pytest.raises(SlurmOutputError, match="no ExitCode"):
        parse_scontrol_exit("JobId=9 JobState=FAILED\n", "9")
    with pytest.raises(SlurmOutputError, match="no record"):
        parse_scontrol_exit(record, "8")


def test_resource_hints_become_sbatch_options() -> None:
    hints = lb.Resources(
        nodes=2, tasks=4, cpus_per_task=3, memory_mb=2048, time_limit_s=61, partition="gpu", account="proj-1", gpus=1
    )
    assert sbatch_resource_args(hints) == [
        "--nodes=2",
        "--ntasks=4",
        "--cpus-per-task=3",
        "--mem=2048M",
        "--time=2",
        "--partition=gpu",
        "--account=proj-1",
        "--gpus=1",
    ]
    assert sbatch_resource_args(lb.Resources()) == []
    assert SlurmOptions(sbatch_args=("--qos=debug",)).sbatch_args == ("--qos=debug",)
    for bad in ("-q debug", "--qos debug", "; rm -rf /"):
        with pytest.raises(ValueError, match="one '--option'"):
            SlurmOptions(sbatch_args=(bad,))
