"""The ``ssh`` site against a real OpenSSH server on loopback, through a real bus.

The server (tests/_sshd.py) is Debian's sshd with a generated host key, logging in as
an unprivileged user with a generated key.  The remote host is this machine, so a
test can also look at the job's processes directly (pidfd, /proc) -- that is how it
proves that a job survived a dropped connection, or that cancel stopped its children.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import lwfm_bus as lb
from adapters._sshconn import SshPool, SshTarget
from adapters._tracking import Observation
from adapters.ssh import SshSite, _parse_statuses
from lwfm_bus import JobState
from lwfm_bus.testing import hold_connection
from tests._helpers import is_gone, job_events, read_fifo_line, wait_pid_exit, wait_state, write_sites
from tests.sites._sshd import SshServer, keygen, sshd, write_known_hosts

__all__ = ["sshd"]  # the fixture, re-exported for pytest

linux_only = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="uses pidfd and /proc")


def _sites(tmp_path: Path, server: SshServer, **extra: object) -> Path:
    options = {"adapter": "ssh", **server.site_options(poll_interval_s=0.2, kill_grace_s=2, **extra)}
    return write_sites(tmp_path / "sites.toml", {"remote": options})


@pytest_asyncio.fixture
async def rbus(bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path) -> AsyncIterator[lb.Bus]:
    """A bus whose sites file has ``remote``: the ssh site on the test's sshd."""
    config = bus_config.model_copy(update={"sites_file": _sites(tmp_path, sshd), "agents": ("local", "remote")})
    async with hold_connection(config) as bus:
        yield bus


async def _ssh_site(bus: lb.Bus) -> SshSite:
    """The adapter this process's agent drives (its watcher, its pool), else a client's."""
    site = await bus._agent_adapter("remote") or await bus.site("remote")
    assert isinstance(site, SshSite)
    return site


def _chown_to_user(path: Path) -> None:
    user = pwd.getpwnam("lwfmtest")
    os.chown(path, user.pw_uid, user.pw_gid)


# --------------------------------------------------------------------- submit, status, logs


async def test_submit_status_exit_code_and_logs_over_ssh(rbus: lb.Bus, sshd: SshServer) -> None:
    script = (
        'echo "id=$LWFM_JOB_ID site=$LWFM_SITE wf=$LWFM_WORKFLOW_ID bus=$LWFM_BUS_URL user=$(id -un) extra=$EXTRA"; '
        'echo "to err" >&2; exit 3'
    )
    wf = await rbus.define_workflow("remote")
    failing = await rbus.submit(lb.JobDefn.of(script, env={"EXTRA": "a b'c"}), site="remote", workflow=wf)
    fine = await rbus.submit(lb.JobDefn.of(["echo", "a | b ; c"]), site="remote")  # argv: never re-parsed

    status = await failing.wait(timeout=30)
    assert (status.state, status.exit_code, status.site) == (JobState.FAILED, 3, "remote")
    assert status.native_info == "exit code 3"
    out = (await failing.logs("stdout")).decode()
    assert out == (
        f"id={failing.job_id} site=remote wf={wf.workflow_id} bus={rbus.connected_url} user=lwfmtest extra=a b'c\n"
    )
    assert await failing.logs("stderr") == b"to err\n"

    done = await fine.wait(timeout=30)
    assert (done.state, done.exit_code) == (JobState.COMPLETE, 0)
    assert await fine.logs() == b"a | b ; c\n"

    events = await job_events(rbus, fine.job_id)
    assert [e.state for e in events] == [JobState.READY, JobState.PENDING, JobState.RUNNING, JobState.COMPLETE]
    assert events[2].native_id is not None and events[2].native_id.isdigit()  # the remote pid
    record = await fine.status()
    assert (record.state, record.native_id) == (JobState.COMPLETE, events[2].native_id)

    site = await _ssh_site(rbus)
    ctx = lb.JobContext(job_id=failing.job_id, site="remote")
    assert await site.status(ctx) is JobState.FAILED
    assert await site.status(lb.JobContext(site="remote")) is None  # never submitted
    # The job's environment file is private: it may hold the bus credentials.
    env_file = sshd.home / site._root / "jobs" / failing.job_id / "env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    # Submitting the same job id again does not start it again.
    first_pid = (await failing.status()).native_id
    assert await site.submit(ctx, lb.JobDefn.of(["echo", "again"])) == first_pid
    assert (await failing.logs("stdout")).decode() == out
    assert (await failing.status()).state is JobState.FAILED


@linux_only
async def test_cancel_stops_the_remote_job_and_its_children(rbus: lb.Bus, sshd: SshServer) -> None:
    fifo = sshd.workdir / "child.pid"
    os.mkfifo(fifo)
    _chown_to_user(fifo)
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open first: the job's write never blocks
    try:
        job = await rbus.submit(
            lb.JobDefn.of(["/bin/sh", "-c", 'sleep 300 & echo $! > "$1"; wait', "job", str(fifo)]), site="remote"
        )
        running = await wait_state(rbus, job.job_id, JobState.RUNNING)
        child = int(await read_fifo_line(read_end))
    finally:
        os.close(read_end)
    assert running.native_id is not None
    leader = int(running.native_id)
    assert not is_gone(child) and not is_gone(leader)
    child_fd = os.pidfd_open(child)
    try:
        await job.cancel()
        status = await job.wait(timeout=30)
        assert (status.state, status.native_info) == (JobState.CANCELLED, "cancelled")
        await wait_pid_exit(child, timeout=10)  # the background child too, not only the shell
    finally:
        os.close(child_fd)
    assert is_gone(child) and is_gone(leader)
    assert (await job.status()).state is JobState.CANCELLED
    await job.cancel()  # a late cancel changes nothing
    assert (await job.status()).state is JobState.CANCELLED


# --------------------------------------------------------------------- connection loss


@linux_only
async def test_a_time_limit_ends_the_remote_job_and_its_children(rbus: lb.Bus, sshd: SshServer) -> None:
    """Issue 20, item 2: limits held on Slurm only.  A timer on the host ends the job's process
    group at the limit (whatever the agent does meanwhile): FAILED, native state TIMEOUT."""
    fifo = sshd.workdir / "limited.pid"
    os.mkfifo(fifo)
    _chown_to_user(fifo)
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        defn = lb.JobDefn.of(["/bin/sh", "-c", 'sleep 300 & echo $! > "$1"; wait', "job", str(fifo)])
        job = await rbus.submit(defn.model_copy(update={"resources": lb.Resources(time_limit_s=2)}), site="remote")
        await wait_state(rbus, job.job_id, JobState.RUNNING)
        child = int(await read_fifo_line(read_end))
    finally:
        os.close(read_end)
    status = await job.wait(timeout=60)
    assert (status.state, status.native_state) == (JobState.FAILED, "TIMEOUT")
    assert status.native_info is not None and "time limit" in status.native_info
    await wait_pid_exit(child, timeout=10)  # the background child too
    assert is_gone(child)


async def test_job_survives_a_dropped_connection_which_is_then_recovered(rbus: lb.Bus, sshd: SshServer) -> None:
    go = sshd.workdir / "go"
    job = await rbus.submit(
        lb.JobDefn.of(["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05; done; echo released', "job", str(go)]),
        site="remote",
    )
    running = await wait_state(rbus, job.job_id, JobState.RUNNING)
    assert running.native_id is not None
    pid = int(running.native_id)
    site = await _ssh_site(rbus)
    pool = site.pool
    assert pool.connects == 1

    assert sshd.drop_connections() >= 1  # every client connection is cut; the listener stays
    assert not is_gone(pid), "the job must outlive the connection that started it"
    go.touch()
    status = await job.wait(timeout=30)  # the watcher's next poll reconnects, then sees the end
    assert (status.state, status.exit_code) == (JobState.COMPLETE, 0)
    assert pool.connects == 2
    assert await job.logs() == b"released\n"

    # Now the server is down for a while: an operation retries with backoff until it is back.
    sshd.stop()
    ctx = lb.JobContext(job_id=job.job_id, site="remote")
    failures = pool.failed_attempts
    pending = asyncio.create_task(site.status(ctx))
    await pool.wait_for(lambda: pool.failed_attempts > failures, timeout=30)  # it tried, and failed
    assert not pending.done()
    sshd.start()
    assert await asyncio.wait_for(pending, 30) is JobState.COMPLETE
    assert pool.connects == 3


async def test_unreachable_host_gives_up_with_a_clear_error(tmp_path: Path, sshd: SshServer) -> None:
    sshd.stop()
    pool = SshPool(
        SshTarget(
            host="127.0.0.1",
            port=sshd.port,
            user=sshd.user,
            identity_files=(sshd.identity,),
            known_hosts=sshd.known_hosts,
            reconnect_timeout_s=0.5,
        )
    )
    with pytest.raises(lb.SiteError, match=r"cannot reach lwfmtest@127\.0\.0\.1:\d+ \(gave up after 0\.5s\)"):
        await pool.connection()
    assert pool.failed_attempts >= 2  # it did retry
    await pool.close()


# --------------------------------------------------------------------- host keys


async def _open_fails(bus_config: lb.BusConfig, sites: Path) -> str:
    async with lb.connect(bus_config.model_copy(update={"sites_file": sites})) as bus:
        with pytest.raises(lb.SiteError) as info:
            await bus.site("remote")
    return str(info.value)


async def test_unknown_host_key_is_refused(bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path) -> None:
    write_known_hosts(sshd.known_hosts, sshd.port, None)  # the file exists, the host is not in it
    message = await _open_fails(bus_config, _sites(tmp_path, sshd))
    assert f"host key of [127.0.0.1]:{sshd.port} is unknown" in message
    assert "refusing to connect" in message
    assert str(sshd.known_hosts) in message


async def test_changed_host_key_is_refused(bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")  # what an attacker's server would present
    write_known_hosts(sshd.known_hosts, sshd.port, other)
    message = await _open_fails(bus_config, _sites(tmp_path, sshd))
    assert f"host key of [127.0.0.1]:{sshd.port} has CHANGED" in message
    assert "this may be an attack" in message


async def test_missing_known_hosts_file_is_refused(bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path) -> None:
    sites = _sites(tmp_path, sshd, known_hosts=str(tmp_path / "nowhere" / "known_hosts"))
    message = await _open_fails(bus_config, sites)
    assert "known_hosts file" in message and "does not exist: host keys are always verified" in message


# --------------------------------------------------------------------- jump host, SFTP


async def test_jump_host_and_sftp_put_get_with_checksums(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    # The same sshd serves as the jump host: the target connection is tunnelled through it.
    sites = _sites(tmp_path, sshd, jump_host=f"lwfmtest@127.0.0.1:{sshd.port}")
    async with lb.connect(bus_config.model_copy(update={"sites_file": sites, "agents": ("*",)})) as bus:
        site = await _ssh_site(bus)
        job = await bus.submit(lb.JobDefn.of(["sha256sum", "data.bin"], cwd=str(sshd.workdir)), site="remote")

        payload = os.urandom(1 << 20) + b"end"
        local = tmp_path / "data.bin"
        local.write_bytes(payload)
        digest = hashlib.sha256(payload).hexdigest()
        await site.put(local, f"{sshd.rel_workdir}/data.bin")
        remote = sshd.workdir / "data.bin"
        assert remote.read_bytes() == payload
        assert remote.owner() == "lwfmtest"
        assert not list(sshd.workdir.glob(".*lwfm-tmp"))  # the temporary name is gone

        back = tmp_path / "back.bin"
        await site.get(f"{sshd.rel_workdir}/data.bin", back)
        assert back.read_bytes() == payload
        with pytest.raises(lb.SiteError, match=r"sha256sum .*missing\.bin.* exited 1"):
            await site.get(f"{sshd.rel_workdir}/missing.bin", tmp_path / "missing.bin")
        assert not (tmp_path / "missing.bin").exists()

        # The job ran through the jump host too (it may have started before the put: it
        # then saw no file; run it again to read the uploaded one).
        first = await job.wait(timeout=30)
        assert first.state in (JobState.COMPLETE, JobState.FAILED)
        again = await bus.submit(lb.JobDefn.of(["sha256sum", "data.bin"], cwd=str(sshd.workdir)), site="remote")
        assert (await again.wait(timeout=30)).state is JobState.COMPLETE
        assert (await again.logs()).decode().split()[0] == digest


async def test_bus_put_and_get_over_ssh_notate_with_checksums(rbus: lb.Bus, sshd: SshServer, tmp_path: Path) -> None:
    """The repository on a remote site: put copies over SFTP and notates; get brings it back."""
    payload = os.urandom(4096)
    local = tmp_path / "in.bin"
    local.write_bytes(payload)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    site_path = f"{sshd.rel_workdir}/in.bin"

    put = await rbus.put(local, site_path, {"role": "input"}, site="remote")
    assert (sshd.workdir / "in.bin").read_bytes() == payload
    assert (put.site, put.location, put.checksum, put.size, put.direction) == (
        "remote", site_path, digest, 4096, "put",
    )  # fmt: skip
    found = await rbus.find({"role": "input"}, site="remote")
    assert [r.data_id for r in found.records] == [put.data_id]

    back = tmp_path / "back.bin"
    got = await rbus.get(site_path, back, site="remote")
    assert back.read_bytes() == payload
    assert (got.checksum, got.origin_site, got.origin, got.metadata) == (digest, "remote", site_path, {"role": "input"})


# --------------------------------------------------------------------- adoption


@linux_only
async def test_a_job_that_ended_while_nobody_watched_is_reported_by_the_next_process(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    config = bus_config.model_copy(update={"sites_file": _sites(tmp_path, sshd), "agents": ("*",)})
    go = sshd.workdir / "go"
    async with lb.connect(config) as bus:
        job = await bus.submit(
            lb.JobDefn.of(["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05; done; exit 7', "j", str(go)]),
            site="remote",
        )
        running = await wait_state(bus, job.job_id, JobState.RUNNING)
    assert running.native_id is not None
    go.touch()  # the job ends with nobody watching it
    await wait_pid_exit(int(running.native_id))
    async with lb.connect(config) as bus:  # the site's agent again: opening the site adopts its unfinished jobs
        status = await bus.wait(job.job_id, timeout=30)
        assert (status.state, status.exit_code, status.native_info) == (JobState.FAILED, 7, "exit code 7")
        assert [e.state for e in await job_events(bus, job.job_id)][-1] is JobState.FAILED


# --------------------------------------------------------------------- strict parsing


def test_status_output_is_parsed_strictly() -> None:
    ids = ["a1", "b2"]
    good = _parse_statuses(0, "a1 running 42 0\nb2 exited 3 0\nend\n", "", ids)
    assert good["a1"].state is JobState.RUNNING
    assert (good["b2"].state, good["b2"].exit_code) == (JobState.FAILED, 3)
    cancelled = _parse_statuses(0, "a1 gone 42 1\nb2 exited 0 1\nend\n", "", ids)
    assert {o.state for o in cancelled.values()} == {JobState.CANCELLED}
    assert cancelled["a1"].exit_code is None

    for text, rc in [("a1 running 42 0\n", 0), ("garbage\nend\n", 0), ("", 1), ("a1 flying 1 0\nend\n", 0)]:
        found = _parse_statuses(rc, text, "boom" if rc else "", ids)
        assert set(found) == set(ids)
        assert all(isinstance(o, Observation) and o.state is None and o.error for o in found.values()), found
    missing = _parse_statuses(0, "a1 running 42 0\nend\n", "", ids)
    assert missing["b2"].error == "status script: no answer for this job"
    assert re.search("unexpected line 'garbage'", _parse_statuses(0, "garbage\nend\n", "", ids)["a1"].error or "")
