"""Jobs on the ``local`` site: real subprocesses, a real nats-server, no mocks.

Synchronisation is always on something that happens: a job event on the bus, a line
from a process, a FIFO that a job writes to, or a pidfd that the kernel makes readable
when a process exits.  Nothing here sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from tests._helpers import cli_env, is_gone, job_events, read_fifo_line, wait_state

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc, pidfd and FIFOs")

# A job that blocks until a file appears.  The loop is the job's own behaviour (it stands
# for "a long computation"), not synchronisation in the test.
_WAIT_FOR_FILE = 'while [ ! -e "$1" ]; do sleep 0.05; done'


def _blocker(go: Path, then: str = "", *args: str) -> lb.JobDefn:
    """A job that waits for ``go`` (its $1) to exist, then runs the shell text ``then`` ($2... are ``args``)."""
    script = f"{_WAIT_FOR_FILE}; {then}" if then else _WAIT_FOR_FILE
    return lb.JobDefn.of(["/bin/sh", "-c", script, "wait-for-go", str(go), *args])


def _python(code: str, **kw: object) -> lb.JobDefn:
    return lb.JobDefn.of([sys.executable, "-c", code], **kw)  # type: ignore[arg-type]


async def _wait_pidfd(pidfd: int, timeout: float = 20) -> None:
    """Until the process behind ``pidfd`` has exited: the kernel makes the pidfd readable."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await asyncio.wait_for(gone, timeout)
    finally:
        loop.remove_reader(pidfd)


def _proc_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid``, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


# --------------------------------------------------------------------- use case 3a


async def test_use_case_3a_a_then_b_then_c_in_one_workflow(bus: lb.Bus) -> None:
    wf = await bus.define_workflow("abc")
    ids: list[str] = []
    for name in "ABC":
        job = await bus.submit(
            _python(f"print({name!r})", name=name), workflow=wf, parents=ids[-1:]
        )  # B runs only after A is COMPLETE, C after B: each is submitted after the previous wait
        status = await job.wait(timeout=30)
        assert status.state is JobState.COMPLETE
        assert status.exit_code == 0
        assert status.workflow_id == wf.workflow_id
        assert await job.logs("stdout") == f"{name}\n".encode()
        ids.append(job.job_id)

    records = await bus.jobs(workflow=wf)
    assert [r.job_id for r in records] == ids
    assert [r.name for r in records] == ["A", "B", "C"]
    assert [r.state for r in records] == [JobState.COMPLETE] * 3
    assert [r.exit_code for r in records] == [0, 0, 0]
    assert [r.parent_ids for r in records] == [(), (ids[0],), (ids[1],)]
    workflow = await bus.workflow(wf.workflow_id)
    assert workflow is not None and workflow.name == "abc"


# --------------------------------------------------------------------- outcomes and logs


async def test_failing_job_is_failed_with_its_exit_code_and_separate_logs(bus: lb.Bus) -> None:
    job = await bus.submit(
        _python("import sys; print('to out'); print('to err', file=sys.stderr); sys.exit(3)", name="fails")
    )
    status = await job.wait(timeout=30)
    assert status.state is JobState.FAILED
    assert status.exit_code == 3
    assert status.native_info == "exit code 3"
    assert await job.logs("stdout") == b"to out\n"
    assert await job.logs("stderr") == b"to err\n"
    record = await job.status()
    assert (record.state, record.exit_code, record.name) == (JobState.FAILED, 3, "fails")


async def test_shell_string_job_runs_through_sh(bus: lb.Bus) -> None:
    shell = await bus.submit(lb.JobDefn.of("echo a | tr a b"))
    argv = await bus.submit(lb.JobDefn.of(["echo", "a | tr a b"]))  # argv is never re-parsed by a shell
    assert (await shell.wait(timeout=30)).state is JobState.COMPLETE
    assert (await argv.wait(timeout=30)).state is JobState.COMPLETE
    assert await shell.logs() == b"b\n"
    assert await argv.logs() == b"a | tr a b\n"


def test_job_definition_needs_exactly_one_of_argv_and_shell() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        lb.JobDefn(argv=("true",), shell="true")
    with pytest.raises(ValueError, match="exactly one"):
        lb.JobDefn()
    assert lb.JobDefn.of("true").shell == "true"
    assert lb.JobDefn.of(["true"]).argv == ("true",)


# --------------------------------------------------------------------- cancel


@linux_only
async def test_cancel_stops_a_running_job_and_its_children(bus: lb.Bus, tmp_path: Path) -> None:
    fifo = tmp_path / "child.pid"
    os.mkfifo(fifo)
    # Open the read end first: the job's write then never blocks, and we wake when it writes.
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        job = await bus.submit(
            lb.JobDefn.of('sleep 300 & echo $! > "$CHILD_PID_FILE"; wait', env={"CHILD_PID_FILE": str(fifo)})
        )
        running = await wait_state(bus, job.job_id, JobState.RUNNING)
        assert running.native_id is not None
        child = int(await read_fifo_line(read_end))
    finally:
        os.close(read_end)
    assert child != int(running.native_id)
    # Alive: running, sleeping, or in uninterruptible sleep (D, e.g. paging in) -- not a zombie.
    assert _proc_state(child) in ("S", "R", "D"), "the background child must be alive before the cancel"
    child_fd = os.pidfd_open(child)
    try:
        await job.cancel()
        status = await job.wait(timeout=30)
        assert status.state is JobState.CANCELLED
        assert status.native_info == "cancelled"
        await _wait_pidfd(child_fd, timeout=10)  # the child, not only the shell, is stopped
    finally:
        os.close(child_fd)
    assert is_gone(child)
    assert is_gone(int(running.native_id))
    assert (await job.status()).state is JobState.CANCELLED


# --------------------------------------------------------------------- concurrency limit


async def test_max_concurrent_keeps_the_next_job_pending(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    sites = tmp_path / "sites.toml"
    sites.write_text("[sites.local]\nmax_concurrent = 1\n")
    go, first_done = tmp_path / "GO", tmp_path / "first-done"
    async with lb.connect(bus_config.model_copy(update={"sites_file": sites})) as bus:
        first = await bus.submit(_blocker(go, 'touch "$2"', str(first_done)))
        # The second job fails unless the first has finished before it starts.
        second = await bus.submit(lb.JobDefn.of(["/bin/sh", "-c", 'test -e "$1"', "check", str(first_done)]))
        await wait_state(bus, first.job_id, JobState.RUNNING)

        record = await bus.status(second.job_id)
        assert record.state is JobState.PENDING
        assert record.native_id is None  # no process was started for it

        go.touch()
        one, two = await first.wait(timeout=30), await second.wait(timeout=30)
    assert (one.state, one.exit_code) == (JobState.COMPLETE, 0)
    assert (two.state, two.exit_code) == (JobState.COMPLETE, 0)


async def test_cancel_of_a_queued_job_does_not_wait_for_a_free_slot(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    sites = tmp_path / "sites.toml"
    sites.write_text("[sites.local]\nmax_concurrent = 1\n")
    go = tmp_path / "GO"
    async with lb.connect(bus_config.model_copy(update={"sites_file": sites})) as bus:
        first = await bus.submit(_blocker(go))
        queued = await bus.submit(lb.JobDefn.of(["true"]))
        await wait_state(bus, first.job_id, JobState.RUNNING)
        try:
            await queued.cancel()
            status = await queued.wait(timeout=3)
            assert status.state is JobState.CANCELLED
        finally:
            go.touch()
            await first.wait(timeout=30)


# --------------------------------------------------------------------- the job's own view of the bus


async def test_job_environment_names_the_job_the_bus_and_the_workflow(bus: lb.Bus) -> None:
    wf = await bus.define_workflow("env")
    job = await bus.submit(
        _python(
            "import os; print(os.environ['LWFM_JOB_ID'], os.environ['LWFM_BUS_URL'], os.environ['LWFM_WORKFLOW_ID'])"
        ),
        workflow=wf,
    )
    assert (await job.wait(timeout=30)).state is JobState.COMPLETE
    assert bus.connected_url is not None
    assert (await job.logs()).decode().split() == [job.job_id, bus.connected_url, wf.workflow_id]


async def test_job_publishes_an_event_attributed_to_itself(bus: lb.Bus) -> None:
    code = """
import asyncio, os
import lwfm_bus as lb

async def main():
    async with lb.connect() as bus:  # everything from the LWFM_* environment the job was given
        data = lb.DataArrival(
            data_id=lb.new_id(), site=os.environ["LWFM_SITE"], location="/results/out.csv",
            job_id=os.environ["LWFM_JOB_ID"], workflow_id=os.environ["LWFM_WORKFLOW_ID"] or None,
        )
        await bus.publish(lb.make_event(data, source="/jobs/" + os.environ["LWFM_JOB_ID"]))

asyncio.run(main())
"""
    wf = await bus.define_workflow("emits")
    job = await bus.submit(_python(code), workflow=wf)
    status = await job.wait(timeout=30)
    assert status.state is JobState.COMPLETE, (await job.logs("stderr")).decode()
    async with bus.replay(lb.job_filter(job.job_id)) as history:
        arrivals = [e async for e in history if isinstance(e, lb.DataEvent)]
    assert len(arrivals) == 1
    assert arrivals[0].data.job_id == job.job_id
    assert arrivals[0].data.workflow_id == wf.workflow_id
    assert arrivals[0].data.location == "/results/out.csv"


# --------------------------------------------------------------------- the index is a projection


async def test_index_is_rebuilt_from_the_stream(bus_config: lb.BusConfig) -> None:
    async with lb.connect(bus_config) as bus:
        ok = await bus.submit(lb.JobDefn.of(["true"]))
        bad = await bus.submit(lb.JobDefn.of(["false"]))
        assert (await ok.wait(timeout=30)).state is JobState.COMPLETE
        assert (await bad.wait(timeout=30)).state is JobState.FAILED
        assert (await bus.status(ok.job_id)).state is JobState.COMPLETE  # the index file now exists

    index = bus_config.home / "index.sqlite"
    assert index.exists()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)

    async with lb.connect(bus_config) as bus:
        record = await bus.status(ok.job_id)
        assert (record.state, record.exit_code) == (JobState.COMPLETE, 0)
        failed = await bus.status(bad.job_id)
        assert (failed.state, failed.exit_code) == (JobState.FAILED, 1)
        history = await (await bus.index()).history(ok.job_id)
        assert [state for state, _ in history] == [
            JobState.READY,
            JobState.PENDING,
            JobState.RUNNING,
            JobState.COMPLETE,
        ]
        times = [t for _, t in history]
        assert times == sorted(times)
    assert index.exists()


# --------------------------------------------------------------------- adoption after the launcher died

_LAUNCHER = """
import asyncio, sys
import lwfm_bus as lb

async def main():
    url, home, go = sys.argv[1:4]
    # The local site's agent: it takes the submission and runs the job.
    async with lb.connect(lb.BusConfig(servers=(url,), home=home, agents=("local",))) as bus:
        defn = lb.JobDefn.of(["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05; done', "wait-for-go", go])
        job = await bus.submit(defn)
        print(job.job_id, flush=True)
        await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def _launcher(bus_config: lb.BusConfig, go: Path):  # type: ignore[no-untyped-def]
    """Another process, same home, the site's only agent: it submits a job waiting for ``go`` and runs it."""
    env = cli_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LAUNCHER,
        bus_config.servers[0],
        str(bus_config.home),
        str(go),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip(), "the launcher exited before submitting"
        yield proc, line.decode().strip()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def _kill_launcher(proc: asyncio.subprocess.Process) -> None:
    proc.kill()  # SIGKILL: no cleanup of any kind runs
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _client(bus_config: lb.BusConfig) -> lb.BusConfig:
    """The same bus, as a process that runs no agent."""
    return bus_config.model_copy(update={"agents": ()})


@linux_only
async def test_a_restarted_agent_adopts_a_job_still_running(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    go = tmp_path / "GO"
    async with lb.connect(_client(bus_config)) as bus:
        async with _launcher(bus_config, go) as (launcher, job_id):
            running = await wait_state(bus, job_id, JobState.RUNNING)
            assert running.native_id is not None
            await _kill_launcher(launcher)
        pid = int(running.native_id)
        assert not is_gone(pid), "the job must outlive its agent"

        async with lb.connect(bus_config):  # the agent again: opening the site adopts the orphan
            go.touch()
            status = await bus.wait(job_id, timeout=30)
        assert (status.state, status.exit_code) == (JobState.COMPLETE, 0)
        assert status.native_id == str(pid)
        record = await bus.status(job_id)
        assert (record.state, record.exit_code) == (JobState.COMPLETE, 0)
        terminal = [s.state for s in await job_events(bus, job_id) if s.state.is_terminal]
        assert terminal == [JobState.COMPLETE]


@linux_only
async def test_a_restarted_agent_reports_a_job_killed_while_nobody_watched(
    bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    go = tmp_path / "GO"  # never created
    async with lb.connect(_client(bus_config)) as bus:
        async with _launcher(bus_config, go) as (launcher, job_id):
            await wait_state(bus, job_id, JobState.RUNNING)
            await _kill_launcher(launcher)
        native_id = (await bus.status(job_id)).native_id
        assert native_id is not None
        pid = int(native_id)
        pidfd = os.pidfd_open(pid)
        try:
            os.killpg(pid, signal.SIGKILL)  # the job runs in its own session: pgid == pid
            await _wait_pidfd(pidfd)
        finally:
            os.close(pidfd)

        async with lb.connect(bus_config):  # the agent again
            status = await bus.wait(job_id, timeout=30)
        assert status.state is JobState.FAILED
        assert status.exit_code is None
        assert status.native_info is not None
        assert "exit code" in status.native_info or "signal" in status.native_info
        assert (await bus.status(job_id)).state is JobState.FAILED


@linux_only
async def test_a_later_agent_in_the_same_process_adopts_a_job_left_running(
    bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    go = tmp_path / "GO"
    async with lb.connect(bus_config) as first:
        job = await first.submit(_blocker(go))
        await wait_state(first, job.job_id, JobState.RUNNING)
    # ``first`` closed: its agent stopped watching, the job runs on ("will be adopted later").
    async with lb.connect(bus_config) as second:
        go.touch()
        status = await second.wait(job.job_id, timeout=5)
        assert status.state is JobState.COMPLETE


# --------------------------------------------------------------------- an agent killed half-way

_HALF_SUBMITTER = """
import asyncio, os, signal, sys
import lwfm_bus as lb
from lwfm_bus._sites._local import LocalSite

url, home, job_id, counter, point = sys.argv[1:6]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(LocalSite, point, die)  # the real submit path of the agent, killed at this step

async def main():
    config = lb.BusConfig(servers=(url,), home=home, agents=("local",), agent_ack_wait_s=2.0)
    async with lb.connect(config) as bus:
        await bus.submit(lb.JobDefn.of(["/bin/sh", "-c", 'echo ran >> "$1"', "count", counter]), job_id=job_id)
        await asyncio.Event().wait()  # until its agent dies taking the job

asyncio.run(main())
"""


@pytest.mark.parametrize(
    "point",
    [
        "_mark_active",  # the job's directory exists, nothing says who runs it
        "_spawn",  # marked as ours, PENDING reported, never launched
    ],
)
async def test_a_job_whose_agent_died_half_way_runs_once_on_another_agent(
    bus_config: lb.BusConfig, tmp_path: Path, point: str
) -> None:
    job_id, counter = lb.new_id(), tmp_path / "runs"
    env = cli_env()
    async with lb.connect(_client(bus_config)) as bus:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _HALF_SUBMITTER, bus_config.servers[0], str(bus_config.home), job_id, str(counter),
            point, env=env,
        )  # fmt: skip
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
        assert (bus_config.home / "sites" / "local" / "jobs" / job_id / "defn.json").exists()

        # Submitting the same id again is a no-op; the submission the dead agent held is
        # redelivered (after its 2 s ack wait) to the next agent, which adopts the job.
        await bus.submit(lb.JobDefn.of(["/bin/sh", "-c", "echo never"]), job_id=job_id)
        async with lb.connect(bus_config.model_copy(update={"agent_ack_wait_s": 2.0})):
            status = await bus.wait(job_id, timeout=30)
        assert status.state is JobState.COMPLETE
        assert counter.read_text() == "ran\n"
        terminal = [s.state for s in await job_events(bus, job_id) if s.state.is_terminal]
        assert terminal == [JobState.COMPLETE]
