"""The ``ssh`` site: jobs run on a remote host, detached from the connection.

A job is started by one SSH command that claims its directory on the host, writes its
environment file (0600) from stdin and launches it with ``setsid``: the job is a
session and process-group leader with its output in files, so it survives a dropped
connection, a closed adapter and a restart of this process, and cancel signals its
whole process group.  See :mod:`adapters._scripts` for the scripts and the layout.

Status comes from the job's directory (pid, exit code, cancel marker): one command per
interval for every unfinished job of the site (:class:`~adapters._tracking.Watcher`),
or, in callback mode, from the job itself.  Output is read over SFTP; ``put``/``get``
copy over SFTP and compare SHA-256 checksums computed on both sides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, PositiveFloat

from lwfm_bus import JobContext, JobDefn, JobState, LogStream, SiteError, SiteRuntime

from ._hosts import CommandFailed, resolve_dir
from ._jobenv import BusReach, env_file, job_environment
from ._scripts import SSH_CANCEL, SSH_STATUS, SSH_SUBMIT, WRAPPER
from ._sshconn import SshHost, SshPool, SshTarget, acquire_pool, release_pool
from ._tracking import FAST_POLL_S, JobStore, Observation, Tracked, Watcher

__all__ = ["SshOptions", "SshSite"]

_SUBMITTED = re.compile(r"(started|exists|cancelled|failed) (.*)\n?")
_STATUS_LINE = re.compile(r"(\S+) (unknown|pending|running|exited|gone) (-|-?\d{1,10}) ([012])")
_CHUNK = 200  # job ids per status command: bounded command lines


class SshOptions(SshTarget, BusReach):
    """``[sites.NAME]`` with ``adapter = "ssh"``: the connection, plus where and how jobs run."""

    root: str = Field(
        default=".lwfm-bus/sites",
        pattern=r"^[^\x00\n]{1,4096}$",
        description="Directory on the host for job directories (relative: to the login directory).",
    )
    poll_interval_s: PositiveFloat = Field(default=5.0, description="Seconds between status queries.")
    kill_grace_s: PositiveFloat = Field(default=5.0, description="Cancel: SIGTERM, then SIGKILL after this.")
    command_timeout_s: PositiveFloat = Field(default=60.0, description="Limit for one remote command.")

    def target(self) -> SshTarget:
        return SshTarget(**{name: getattr(self, name) for name in SshTarget.model_fields})


class SshSite:
    """Run jobs on one SSH host.  Constructed by the core as ``SshSite(options, runtime)``."""

    Options: ClassVar[type[BaseModel]] = SshOptions

    def __init__(self, options: BaseModel, runtime: SiteRuntime) -> None:
        if not isinstance(options, SshOptions):
            raise SiteError(f"ssh site {runtime.site!r}: expected SshOptions, got {type(options).__name__}")
        self._opts = options
        self._rt = runtime
        self._root = f"{options.root.rstrip('/') or '/'}/{runtime.site}"
        self._pool: SshPool | None = None
        self._host: SshHost | None = None
        self._home: str | None = None  # the jobs' LWFM_BUS_HOME on the host, resolved at open
        self._store = JobStore(runtime.state_dir / "jobs")
        interval = options.callback_poll_s if options.callback else options.poll_interval_s
        self.watcher = Watcher(
            label=f"ssh site {runtime.site}",
            interval_s=interval,
            query=self._query,
            reporter=runtime.reporter,
            store=self._store,
            fast_s=None if options.callback else FAST_POLL_S,  # with callbacks, jobs report their own end
            health=runtime.report_health,
        )

    @property
    def python(self) -> str:
        """The Python with lwfm-bus on the site: what runs pipeline steps' step runner there."""
        return self._opts.python

    @property
    def remote(self) -> bool:
        """Whether its jobs run on another machine (over SSH): a pipeline step there gets no
        directory or home of this machine's."""
        return True

    @property
    def pool(self) -> SshPool:
        if self._pool is None:
            raise SiteError(f"ssh site {self._rt.site!r} is not open")
        return self._pool

    @property
    def host(self) -> SshHost:
        if self._host is None:
            raise SiteError(f"ssh site {self._rt.site!r} is not open")
        return self._host

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect (verifying the host key), then adopt the jobs a previous process left."""
        self._store.open()
        self._pool = acquire_pool(self._opts.target())
        self._host = SshHost(self._pool, self._opts.command_timeout_s)
        try:
            # An agent retries a failed open with a back-off of its own and says so once: one
            # attempt here.  A client (logs, put, get) rides out a restarting host instead.
            await self._pool.connection(retry=self._rt.role != "agent")
            if self._rt.role == "agent":  # a bad bus_home is said now, not at the first job
                await self._job_home()
        except BaseException:
            await release_pool(self._pool)
            self._pool = self._host = None
            raise
        if self._rt.role == "agent":  # a client (logs, put, get) neither adopts nor watches
            await self.watcher.start()  # adopts unfinished jobs; those that ended meanwhile are reported now

    async def _job_home(self) -> str:
        """The jobs' LWFM_BUS_HOME on the host: ``bus_home``, by default ``<root>/<site>/home``."""
        if self._home is None:
            path = self._opts.bus_home or f"{self._root}/home"
            self._home = await resolve_dir(self.host, path, self._opts.command_timeout_s)
        return self._home

    async def close(self) -> None:
        """Stop watching; jobs keep running on the host and are adopted by the next open."""
        await self.watcher.stop()
        if self._pool is not None:
            await release_pool(self._pool)
        self._pool = self._host = None

    # ------------------------------------------------------------------ jobs

    def _job_dir(self, job_id: str) -> str:
        return f"{self._root}/jobs/{job_id}"

    async def submit(self, ctx: JobContext, defn: JobDefn) -> str:
        job_dir = self._job_dir(ctx.job_id)
        env = job_environment(self._rt, ctx, defn, self._opts, home=await self._job_home())
        limit = defn.resources.time_limit_s
        tenths = str(math.ceil(self._opts.kill_grace_s * 10))
        argv = [
            "/bin/sh", "-c", SSH_SUBMIT, "lwfm-submit", WRAPPER, self._root, ctx.job_id, defn.cwd or "",
            "" if limit is None else str(limit), tenths,
        ]  # fmt: skip
        result = await self.host.run(
            [*argv, *defn.command()], stdin=env_file(env), timeout=self._opts.command_timeout_s
        )
        m = _SUBMITTED.fullmatch(result.text())
        if result.returncode != 0 or m is None:
            raise CommandFailed(
                f"submit on {self.host.label}: unexpected answer (exit {result.returncode}): "
                f"{result.text()[:300]!r} {result.error_text()[:300]!r}"
            )
        outcome, detail = m[1], m[2].strip()
        if outcome == "failed":
            raise SiteError(f"job {ctx.job_id} could not start on {self.host.label}: {detail}")
        native = detail if re.fullmatch(r"\d{1,10}", detail) else None
        ctx = ctx.model_copy(update={"native_id": native})
        known = self.watcher.get(ctx.job_id)
        if outcome == "exists" and known is not None:
            return known.ctx.native_id or native or ""
        self.watcher.track(Tracked(ctx=ctx, job_dir=job_dir))
        if outcome == "started":
            await self.watcher.apply(ctx.job_id, Observation(JobState.RUNNING, native_state="running"))
        elif outcome == "cancelled":
            await self.watcher.apply(ctx.job_id, Observation(JobState.CANCELLED, native_state="cancelled"))
        else:
            self.watcher.poke()
        return native or ""

    async def _statuses(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        """One command for many jobs; a line that does not parse is an error on that job."""
        found: dict[str, Observation] = {}
        for start in range(0, len(job_ids), _CHUNK):
            chunk = list(job_ids[start : start + _CHUNK])
            result = await self.host.run(
                ["/bin/sh", "-c", SSH_STATUS, "lwfm-status", self._root, *chunk],
                timeout=self._opts.command_timeout_s,
            )
            found.update(_parse_statuses(result.returncode, result.text(), result.error_text(), chunk))
        return found

    async def _query(self, jobs: Sequence[Tracked]) -> Mapping[str, Observation]:
        return await self._statuses([t.ctx.job_id for t in jobs])

    async def status(self, ctx: JobContext) -> JobState | None:
        obs = (await self._statuses([ctx.job_id])).get(ctx.job_id)
        if obs is None or obs.native_state == "unknown":
            return None
        if obs.state is None:
            raise SiteError(f"status of job {ctx.job_id} on {self.host.label}: {obs.error}")
        return obs.state

    async def cancel(self, ctx: JobContext) -> None:
        """SIGTERM the job's process group, SIGKILL after ``kill_grace_s``; CANCELLED is published here."""
        tenths = str(math.ceil(self._opts.kill_grace_s * 10))
        result = await self.host.run(
            ["/bin/sh", "-c", SSH_CANCEL, "lwfm-cancel", self._root, ctx.job_id, tenths],
            timeout=self._opts.command_timeout_s + self._opts.kill_grace_s,
        )
        answer = result.text().strip()
        if result.returncode != 0 or answer not in ("unknown", "notstarted", "gone", "stopped"):
            raise CommandFailed(f"cancel on {self.host.label}: unexpected answer {answer[:200]!r}")
        if answer == "unknown":
            return
        if self.watcher.get(ctx.job_id) is None:
            self.watcher.track(Tracked(ctx=ctx, job_dir=self._job_dir(ctx.job_id)))
        obs = (await self._statuses([ctx.job_id])).get(ctx.job_id)
        if obs is not None:
            await self.watcher.apply(ctx.job_id, obs)

    async def logs(self, ctx: JobContext, stream: LogStream = "stdout") -> bytes:
        return await self.host.read_file(f"{self._job_dir(ctx.job_id)}/{stream}") or b""

    async def put(self, local_path: Path, site_path: str) -> None:
        """Copy onto the host over SFTP; the host's SHA-256 of what landed must equal ours."""
        await self.host.put(local_path, site_path)

    async def get(self, site_path: str, local_path: Path) -> None:
        """Copy off the host over SFTP; our SHA-256 of what arrived must equal the host's."""
        await self.host.get(site_path, local_path)


def _parse_statuses(returncode: int, text: str, stderr: str, job_ids: Sequence[str]) -> dict[str, Observation]:
    """Strictly: every asked job once, in a known form, then ``end``; anything else is an error."""
    lines = text.splitlines()
    if returncode != 0 or not lines or lines[-1] != "end":
        why = f"status script exited {returncode}: {stderr[:300] or text[-300:]!r}"
        return {job_id: Observation.problem(why) for job_id in job_ids}
    found: dict[str, Observation] = {}
    for line in lines[:-1]:
        m = _STATUS_LINE.fullmatch(line)
        if m is None or m[1] not in job_ids:
            why = f"status script: unexpected line {line[:200]!r}"
            return {job_id: Observation.problem(why) for job_id in job_ids if job_id not in found}
        found[m[1]] = _observation(m[2], m[3], cancelled=m[4] == "1", timed_out=m[4] == "2")
    for job_id in job_ids:
        if job_id not in found:
            found[job_id] = Observation.problem("status script: no answer for this job")
    return found


def _observation(state: str, detail: str, *, cancelled: bool, timed_out: bool = False) -> Observation:
    if state == "unknown":
        return Observation(
            JobState.FAILED, native_state="unknown", native_info="its job directory is gone from the host"
        )
    if state == "pending":
        return Observation(JobState.PENDING, native_state="launching")
    if state == "running":
        return Observation(JobState.RUNNING, native_state="running")
    code = int(detail) if state == "exited" and detail != "-" else None
    if cancelled:
        return Observation(JobState.CANCELLED, native_state="cancelled", native_info="cancelled", exit_code=code)
    if timed_out and state in ("exited", "gone"):
        why = "time limit reached (SIGTERM, then SIGKILL)"
        return Observation(JobState.FAILED, native_state="TIMEOUT", native_info=why, exit_code=code)
    if state == "gone":
        why = "the process is gone and no exit code was recorded (killed, or the host rebooted)"
        return Observation(JobState.FAILED, native_state="gone", native_info=why)
    if code == 0:
        return Observation(JobState.COMPLETE, native_state="exited", exit_code=0)
    return Observation(JobState.FAILED, native_state="exited", native_info=f"exit code {code}", exit_code=code)
