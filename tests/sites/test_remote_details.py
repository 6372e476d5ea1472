"""Remote sites' small defects and their speed (issue 22, items 6 and 7), on the real sshd and Slurm.

- ``put`` onto a remote site into a directory that does not exist creates it, as a
  put on the local site does (it failed: "sftp put ...: No such file").
- A failed pipeline step on a remote site names its job and quotes the end of its
  stderr, read from the site.
- Without callbacks a site's jobs are polled soon after news (a submission, a state
  change), not only once per ``poll_interval_s``: here the interval is minutes, and a
  short job's end is still heard within seconds.  Speed itself is measured in
  ``bench/remote.py``, never asserted here; what is asserted is that the end is heard
  long before the interval, which failed before (the first poll came one interval
  after the submission).
"""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path

import pytest

import lwfm_bus as lb
from adapters._hosts import LocalHost
from adapters._tracking import next_poll_at
from lwfm_bus import JobState
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline
from lwfm_bus.testing import hold_connection
from tests._helpers import write_sites
from tests.sites._slurm import SlurmCluster, slurm
from tests.sites._sshd import SshServer, sshd

__all__ = ["slurm", "sshd"]  # the fixtures, re-exported for pytest

_LONG_S = 600.0  # a poll interval far beyond every wait here: only the paced polls can be heard in time


def _ssh_config(bus_config: lb.BusConfig, tmp_path: Path, server: SshServer, **extra: object) -> lb.BusConfig:
    options = {"adapter": "ssh", **server.site_options(**extra)}
    sites = write_sites(tmp_path / "sites.toml", {"remote": options})
    return bus_config.model_copy(update={"sites_file": sites, "agents": ("*",)})


# --------------------------------------------------------------------- item 6: put into a new directory


async def test_put_onto_an_ssh_site_creates_the_missing_directories(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    local = tmp_path / "in.txt"
    local.write_text("payload")
    site_path = f"{sshd.rel_workdir}/new/deeper/in.txt"
    async with hold_connection(_ssh_config(bus_config, tmp_path, sshd)) as bus:
        record = await bus.put(local, site_path, {"role": "input"}, site="remote")
        assert (sshd.workdir / "new" / "deeper" / "in.txt").read_text() == "payload"
        assert (record.location, record.size) == (site_path, 7)
        assert sorted(p.name for p in (sshd.workdir / "new" / "deeper").iterdir()) == ["in.txt"]  # no temporary
        back = tmp_path / "not" / "yet" / "back.txt"  # and get, into a local directory that does not exist
        await bus.get(site_path, back, site="remote")
    assert back.read_text() == "payload"


async def test_put_on_a_slurm_sites_own_machine_creates_the_missing_directories(tmp_path: Path) -> None:
    """A ``slurm`` site without ``[ssh]`` copies on this machine (its :class:`LocalHost`)."""
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 1000)
    target = tmp_path / "shared" / "run" / "in.bin"
    await LocalHost().put(source, str(target))
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["in.bin"]


# --------------------------------------------------------------------- item 6: a failed remote step


async def test_a_failed_step_on_an_ssh_site_names_its_job_and_quotes_its_stderr(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    """Whatever made it fail on the host (its command, or no lwfm-bus for the step runner
    there), the progress line names the job and the lines below it are its stderr's end."""
    config = _ssh_config(bus_config, tmp_path, sshd, poll_interval_s=0.2)
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent("""\
            pipeline: 1
            name: far
            steps:
              solve:
                site: remote
                run: [sh, -c, 'echo first >&2; echo last words >&2; exit 3']
        """)
    )
    said: list[str] = []
    async with hold_connection(config) as bus, lb.serve_engine(bus):
        report = await run_pipeline(bus, load_pipeline(path, sites={"local", "remote"}), said.append)
        (job,) = await bus.jobs(workflow=report.workflow_id)
        stderr = (await bus.logs(job.job_id, "stderr")).decode()
    assert not report.ok and job.state is JobState.FAILED
    at = next(i for i, line in enumerate(said) if "far:solve" in line and "FAILED" in line)
    assert said[at].endswith(f"job {job.job_id}"), said
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert said[at + 1] == f"{'':10}| {last}", said


async def test_a_failed_remote_steps_unreadable_stderr_is_said_with_how_to_read_it_later(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    """Its tail cannot be read now (here the file's mode forbids it; elsewhere a site this
    process cannot reach): one line says why and gives the command, not silence."""
    runner = sshd.workdir / "python"  # the site's "python": a step runner that fails, hiding its stderr
    runner.write_text('#!/bin/sh\nchmod 000 "$LWFM_JOB_DIR/stderr"\nexit 3\n')
    runner.chmod(0o755)
    os.chown(runner, sshd.home.stat().st_uid, sshd.home.stat().st_gid)
    config = _ssh_config(bus_config, tmp_path, sshd, poll_interval_s=0.2, python=str(runner))
    path = tmp_path / "p.yaml"
    path.write_text("pipeline: 1\nname: hidden\nsteps:\n  solve:\n    site: remote\n    run: [sh, -c, 'true']\n")
    said: list[str] = []
    async with hold_connection(config) as bus, lb.serve_engine(bus):
        report = await run_pipeline(bus, load_pipeline(path, sites={"local", "remote"}), said.append)
        (job,) = await bus.jobs(workflow=report.workflow_id)
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)
    at = next(i for i, line in enumerate(said) if "hidden:solve" in line and "FAILED" in line)
    assert said[at].endswith(f"job {job.job_id}"), said
    assert said[at + 1].startswith(f"{'':10}| (its stderr cannot be read now: "), said
    assert "Permission denied" in said[at + 1] and f"lwfm-bus logs {job.job_id} --stderr" in said[at + 1], said


# --------------------------------------------------------------------- item 7: polls paced by news


async def test_an_ssh_jobs_end_is_heard_long_before_the_poll_interval(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    async with hold_connection(_ssh_config(bus_config, tmp_path, sshd, poll_interval_s=_LONG_S)) as bus:
        first = await bus.submit(lb.JobDefn.of(["true"]), site="remote")
        assert (await first.wait(timeout=30)).state is JobState.COMPLETE
        # Later news starts the fast polls again (the first job's have backed off by now, or will).
        second = await bus.submit(lb.JobDefn.of(["sh", "-c", "exit 4"]), site="remote")
        status = await second.wait(timeout=30)
    assert (status.state, status.exit_code) == (JobState.FAILED, 4)


async def test_a_slurm_jobs_end_is_heard_long_before_the_poll_interval(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    options = {"adapter": "slurm", **slurm.site_options(poll_interval_s=_LONG_S)}
    sites = write_sites(tmp_path / "sites.toml", {"hpc": options})
    async with hold_connection(bus_config.model_copy(update={"sites_file": sites, "agents": ("*",)})) as bus:
        job = await bus.submit(lb.JobDefn.of(["true"]), site="hpc")
        assert (await job.wait(timeout=45)).state is JobState.COMPLETE


def test_polls_come_soon_after_news_then_back_off_to_the_interval() -> None:
    interval, fast, news = 5.0, 0.5, 100.0
    polls = [next_poll_at(None, news, interval, fast)]  # the first job: 0.5 s after its submission
    while polls[-1] < news + 60:
        polls.append(next_poll_at(polls[-1], news, interval, fast))
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert polls[0] == pytest.approx(news + fast)
    assert all(g >= fast for g in gaps)  # never two queries within fast_s
    assert gaps == sorted(gaps)  # backing off ...
    assert sum(p < news + 3 for p in polls) >= 4  # ... from several in the first seconds
    first_full = next(p for p, g in zip(polls, gaps, strict=False) if g == interval)
    assert first_full - news < 12  # ... to the interval after about 10 s


def test_news_during_a_long_wait_brings_the_next_poll_forward_but_never_within_fast_s() -> None:
    interval, fast = 5.0, 0.5
    assert next_poll_at(200.0, 10.0, interval, fast) == 205.0  # old news: the interval
    assert next_poll_at(200.0, 202.0, interval, fast) == 202.5  # a submission 2 s after that poll
    assert next_poll_at(200.0, 200.1, interval, fast) == 200.6  # just after it
    assert next_poll_at(200.0, 199.9, interval, fast) == 200.5  # during it: the least gap
    assert next_poll_at(200.0, 150.0, 0.2, fast) == 200.2  # an interval below fast_s is kept


def test_without_fast_polls_the_interval_is_kept() -> None:
    """Callback mode: jobs report their own end; the watcher is only a safety net."""
    assert next_poll_at(None, 50.0, 60.0, None) == 110.0  # the interval from the first job's submission
    assert next_poll_at(100.0, 150.0, 60.0, None) == 160.0
