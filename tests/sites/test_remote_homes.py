"""A remote job gets what makes sense on its site, not this machine's settings (issue 22, item 2).

Against the real sshd (a separate, unprivileged login user) and a real Slurm driven over
that SSH connection, with every option at its default and nothing set per job: the job
reports, from the remote side, where it runs and which ``LWFM_BUS_HOME`` it was given.
This machine's home belongs to root (the test runner), so a job handed it could not
even create a file there -- which is how a pipeline over SSH failed on ``index.lock``.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline
from lwfm_bus.testing import hold_connection
from tests._helpers import write_sites
from tests.sites._slurm import SlurmCluster, slurm
from tests.sites._sshd import SshServer, python_for_user, sshd

__all__ = ["slurm", "sshd"]  # the fixtures, re-exported for pytest

# What the job sees, from the remote side: its user, directory, home, and whether it may write there.
_REPORT = 'touch "$LWFM_BUS_HOME/written" && echo "$(id -un)|$(pwd -P)|$LWFM_BUS_HOME|$LWFM_JOB_DIR"'


async def _seen_remotely(bus: lb.Bus, site: str) -> tuple[str, str, str, str]:
    job = await bus.submit(lb.JobDefn.of(_REPORT), site=site)  # no cwd, no env: the defaults
    return await _report_of(bus, job.job_id)


async def _report_of(bus: lb.Bus, job_id: str) -> tuple[str, str, str, str]:
    status = await bus.wait(job_id, timeout=60)
    err = (await bus.logs(job_id, "stderr")).decode()
    assert (status.state, status.exit_code) == (JobState.COMPLETE, 0), err
    user, pwd, home, job_dir = (await bus.logs(job_id)).decode().strip().split("|")
    return user, pwd, home, job_dir


def _private_dir_of(path: Path, user: str) -> None:
    assert path.is_dir() and path.owner() == user
    assert path.stat().st_mode & 0o777 == 0o700
    assert (path / "written").exists()


async def test_an_ssh_job_runs_in_its_job_directory_with_a_home_on_the_host(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    options = {"adapter": "ssh", **sshd.site_options(poll_interval_s=0.2)}
    config = bus_config.model_copy(
        update={"sites_file": write_sites(tmp_path / "sites.toml", {"remote": options}), "agents": ("*",)}
    )
    async with hold_connection(config) as bus:
        user, pwd, home, job_dir = await _seen_remotely(bus, "remote")
    assert user == "lwfmtest"
    site_root = sshd.workdir / "sites" / "remote"  # root (per test) / site
    assert Path(job_dir).parent == site_root / "jobs"
    assert pwd == job_dir  # its job directory on the host, not where it was submitted from
    assert pwd != os.getcwd()
    assert home == str(site_root / "home")  # the default: in the site's root on the host
    assert home != str(bus_config.home)
    _private_dir_of(Path(home), "lwfmtest")


async def test_a_remote_job_started_by_a_trigger_gets_the_same_defaults(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    """local A -> remote B through the engine: the engine (in this process, in this cwd) adds no cwd either."""
    options = {"adapter": "ssh", **sshd.site_options(poll_interval_s=0.2)}
    config = bus_config.model_copy(
        update={"sites_file": write_sites(tmp_path / "sites.toml", {"remote": options}), "agents": ("*",)}
    )
    async with hold_connection(config) as bus, lb.serve_engine(bus, lb.EngineConfig(dispatch_backoff_s=0.05)):
        a_id, b_id = lb.new_id(), lb.new_id()
        await bus.set_job_trigger(lb.JobDefn.of(_REPORT), a_id, site="remote", job_id=b_id)
        await bus.submit(lb.JobDefn.of(["true"]), job_id=a_id)
        user, pwd, home, job_dir = await _report_of(bus, b_id)
    assert (user, pwd) == ("lwfmtest", job_dir)
    assert Path(job_dir) == sshd.workdir / "sites" / "remote" / "jobs" / b_id
    assert home == str(sshd.workdir / "sites" / "remote" / "home")


async def test_an_ssh_sites_bus_home_option_is_the_jobs_home(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    """``bus_home`` relative to the login directory, like ``root``."""
    options = {"adapter": "ssh", **sshd.site_options(poll_interval_s=0.2, bus_home=f"{sshd.rel_workdir}/my-home")}
    config = bus_config.model_copy(
        update={"sites_file": write_sites(tmp_path / "sites.toml", {"remote": options}), "agents": ("*",)}
    )
    async with hold_connection(config) as bus:
        _, _, home, _ = await _seen_remotely(bus, "remote")
    assert home == str(sshd.workdir / "my-home")
    _private_dir_of(Path(home), "lwfmtest")


async def test_a_slurm_job_over_ssh_runs_in_its_job_directory_with_a_home_on_the_cluster(
    bus_config: lb.BusConfig, slurm: SlurmCluster, sshd: SshServer, tmp_path: Path
) -> None:
    ssh = sshd.login()
    options = {"adapter": "slurm", **slurm.site_options(ssh=ssh, job_root=f"{sshd.rel_workdir}/slurm")}
    config = bus_config.model_copy(
        update={"sites_file": write_sites(tmp_path / "sites.toml", {"hpc": options}), "agents": ("*",)}
    )
    async with hold_connection(config) as bus:
        user, pwd, home, job_dir = await _seen_remotely(bus, "hpc")
    assert user == "lwfmtest"
    root = sshd.workdir / "slurm"
    assert Path(job_dir).parent == root / "jobs"
    assert pwd == job_dir
    assert home == str(root / "home")  # beside the job directories, on the filesystem the nodes share
    _private_dir_of(Path(home), "lwfmtest")


async def test_a_slurm_job_without_ssh_keeps_this_machines_home(
    bus_config: lb.BusConfig, slurm: SlurmCluster, tmp_path: Path
) -> None:
    """Same machine, same user: this process's home makes sense there, and stays the default."""
    options = {"adapter": "slurm", **slurm.site_options()}
    config = bus_config.model_copy(
        update={"sites_file": write_sites(tmp_path / "sites.toml", {"hpc": options}), "agents": ("*",)}
    )
    async with hold_connection(config) as bus:
        _, pwd, home, job_dir = await _seen_remotely(bus, "hpc")
    assert pwd == job_dir
    assert home == str(bus_config.home)


async def test_a_pipeline_step_on_an_ssh_site_runs_there_as_its_user_with_no_overrides(
    bus_config: lb.BusConfig, sshd: SshServer, tmp_path: Path
) -> None:
    """The issue's case: a pipeline whose step ran over SSH as another user inherited this
    machine's home (PermissionError on its index.lock) and pipeline directory.  The step's
    runner (``python -m lwfm_bus step-exec``) runs as the login user, records its output,
    and the step completes -- with no cwd, env or home set on the step."""
    python = python_for_user(sshd)
    options = {"adapter": "ssh", **sshd.site_options(poll_interval_s=0.2), "python": str(python)}
    sites = write_sites(tmp_path / "sites.toml", {"remote": options})
    config = bus_config.model_copy(update={"sites_file": sites, "agents": ("*",), "engine": "on"})
    path = tmp_path / "away.yaml"
    path.write_text(
        textwrap.dedent("""\
            pipeline: 1
            name: away
            steps:
              there:
                site: remote
                run: [sh, -c, 'echo "$(id -un)|$(pwd -P)|$LWFM_BUS_HOME" > where.txt']
                outputs: {where: where.txt}
        """)
    )
    async with hold_connection(config) as bus:
        report = await run_pipeline(bus, load_pipeline(path, sites={"local", "remote"}), lambda _: None)
        jobs = await bus.jobs(workflow=report.workflow_id)
        err = (await bus.logs(jobs[0].job_id, "stderr")).decode()
        assert report.ok, (report.failures, err)
        record = (await bus.find({"lwfm_output": "where"})).records[0]
    user, pwd, home = Path(record.location).read_text().strip().split("|")
    assert user == "lwfmtest"
    assert Path(record.location).parent == Path(pwd)  # written in its own directory on the host...
    assert Path(pwd).parent == sshd.workdir / "sites" / "remote" / "jobs"  # ...its job directory
    assert str(tmp_path) not in pwd and home.startswith(str(sshd.workdir))  # nothing of this machine's
