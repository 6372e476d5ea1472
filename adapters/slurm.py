"""The ``slurm`` site: jobs submitted with sbatch, here or over an SSH connection.

Each job gets a directory (on the cluster's shared filesystem) holding its environment
file (0600), the batch script -- a constant wrapper, see :mod:`adapters._scripts` --
its stdout/stderr, and the exit code the wrapper records.  Resource hints become sbatch
options; :meth:`SlurmSite.submit_array` runs one definition N times, or once for each
input, as one Slurm job array whose elements are separate bus jobs.

Status without ``sacct``: accounting needs slurmdbd, which many clusters and every
small installation lack, so the watcher asks ``squeue --states=all`` -- which still
lists finished jobs for ``MinJobAge`` (300 s by default) after they end -- once per
interval for all unfinished jobs of the site.  The exit code comes from the wrapper's
record in the job directory, else from ``scontrol show job`` (it also knows the signal
of a job Slurm killed).  A job Slurm has already forgotten (the adapter was down
longer than MinJobAge) is judged from its job directory: exit code, cancel marker, and
-- only if ``sacct = true`` -- accounting; otherwise it is FAILED with that reason.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, PositiveFloat, field_validator

from lwfm_bus import JobContext, JobDefn, JobState, LogStream, SiteError, SiteRuntime

from ._hosts import CommandFailed, CommandResult, Host, LocalHost, resolve_dir
from ._jobenv import BusReach, env_file, job_environment
from ._scripts import JOB_FILES, MARK_CANCELLED, SLURM_SUBMIT, WRAPPER
from ._slurm_parse import (
    SQUEUE_FORMAT,
    SlurmOutputError,
    SqueueRow,
    canonical,
    is_native_id,
    parse_sbatch,
    parse_scontrol_exit,
    parse_squeue,
    sbatch_resource_args,
)
from ._sshconn import SshHost, SshPool, SshTarget, acquire_pool, release_pool
from ._tracking import FAST_POLL_S, JobStore, Observation, Tracked, Watcher

__all__ = ["SlurmOptions", "SlurmSite"]

log = logging.getLogger("lwfm_bus.adapters.slurm")

_SUBMITTED = re.compile(r"(submitted|exists|cancelled|failed) (\S+)\n?")
_FILES_LINE = re.compile(r"(\d{1,9}) (-|-?\d{1,10}) ([01])")
_SACCT_LINE = re.compile(r"(\d{1,12}(?:_\d{1,9})?)\|([A-Z_]{1,32})(?: by \d+)?\|(\d{1,3}):(\d{1,3})")
_CHUNK = 500  # job ids per squeue call: bounded command lines
_INVALID_JOB_ID = "Invalid job id specified"


class SlurmOptions(BusReach):
    """``[sites.NAME]`` with ``adapter = "slurm"``."""

    ssh: SshTarget | None = Field(
        default=None, description="Run the Slurm commands over SSH ([sites.NAME.ssh] table); default: here."
    )
    job_root: str | None = Field(
        default=None,
        pattern=r"^[^\x00\n]{1,4096}$",
        description="Job directories, on a filesystem the compute nodes share (default: the site's state "
        "directory here, '.lwfm-bus/sites/NAME' in the login directory over SSH).",
    )
    slurm_conf: str | None = Field(default=None, pattern=r"^[^\x00\n]{1,4096}$", description="SLURM_CONF.")
    bin_dir: str | None = Field(
        default=None, pattern=r"^[^\x00\n]{1,4096}$", description="Where sbatch, squeue... are (default: PATH)."
    )
    poll_interval_s: PositiveFloat = Field(default=5.0, description="Seconds between squeue queries.")
    command_timeout_s: PositiveFloat = Field(default=30.0, description="Limit for one Slurm command.")
    sbatch_args: tuple[str, ...] = Field(default=(), description="Extra sbatch options, e.g. '--qos=debug'.")
    sacct: bool = Field(default=False, description="Ask sacct (needs slurmdbd) about jobs squeue forgot.")

    @field_validator("sbatch_args")
    @classmethod
    def _options_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            if not re.fullmatch(r"--[a-z][a-z0-9\-]{0,63}(=[^\x00\n]{0,1024})?", arg):
                raise ValueError(f"{arg!r}: each entry must be one '--option' or '--option=value'")
        return value


class SlurmSite:
    """Run jobs through Slurm.  Constructed by the core as ``SlurmSite(options, runtime)``."""

    Options: ClassVar[type[BaseModel]] = SlurmOptions

    def __init__(self, options: BaseModel, runtime: SiteRuntime) -> None:
        if not isinstance(options, SlurmOptions):
            raise SiteError(f"slurm site {runtime.site!r}: expected SlurmOptions, got {type(options).__name__}")
        if options.ssh is None and "python" not in options.model_fields_set:
            options = options.model_copy(update={"python": sys.executable})  # jobs run on this machine's Python
        self._opts = options
        self._rt = runtime
        self._pool: SshPool | None = None
        self._host: Host = LocalHost()
        self._root = ""
        self._home: str | None = None  # the jobs' LWFM_BUS_HOME on the cluster (None: this process's own)
        self._sacct = options.sacct
        self._store = JobStore(runtime.state_dir / "jobs")
        interval = options.callback_poll_s if options.callback else options.poll_interval_s
        self.watcher = Watcher(
            label=f"slurm site {runtime.site}",
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
        return self._opts.ssh is not None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Reach the cluster (sbatch must answer), then adopt the jobs a previous process left."""
        self._store.open()
        if self._opts.ssh is not None:
            self._pool = acquire_pool(self._opts.ssh)
            self._host = SshHost(self._pool, self._opts.command_timeout_s)
        try:
            if self._pool is not None:
                # One attempt for an agent, which retries opening with its own back-off and
                # reports once (see SshSite.open); a client rides out a restarting host.
                await self._pool.connection(retry=self._rt.role != "agent")
            default = f".lwfm-bus/sites/{self._rt.site}" if self._pool else str(self._rt.state_dir / "work")
            self._root = await resolve_dir(self._host, self._opts.job_root or default, self._opts.command_timeout_s)
            if self._opts.bus_home is not None or self._pool is not None:
                # Over SSH the jobs run on another machine (maybe as another user): never this
                # one's home.  Without [ssh] they share this machine, and this home, by default.
                home = self._opts.bus_home or f"{self._root}/home"
                self._home = await resolve_dir(self._host, home, self._opts.command_timeout_s)
            version = await self._slurm(["sbatch", "--version"])
            if version.returncode != 0:
                raise CommandFailed(f"sbatch --version on {self._host.label}: {version.error_text()[:300]}")
        except BaseException:
            await self._release()
            raise
        if self._rt.role == "agent":  # a client (logs, put, get) neither adopts nor watches
            await self.watcher.start()  # adopts unfinished jobs; those that ended meanwhile are reported now

    async def close(self) -> None:
        """Stop watching; Slurm keeps the jobs, and the next open adopts them."""
        await self.watcher.stop()
        await self._release()

    async def _release(self) -> None:
        if self._pool is not None:
            await release_pool(self._pool)
            self._pool = None
        self._host = LocalHost()

    # ------------------------------------------------------------------ commands

    def _env(self) -> dict[str, str]:
        return {"SLURM_CONF": self._opts.slurm_conf} if self._opts.slurm_conf else {}

    def _program(self, name: str) -> str:
        return f"{self._opts.bin_dir.rstrip('/')}/{name}" if self._opts.bin_dir else name

    async def _slurm(self, argv: Sequence[str], *, stdin: bytes = b"") -> CommandResult:
        """A Slurm client command, with a timeout: they block for long when slurmctld is down."""
        return await self._host.run(
            [self._program(argv[0]), *argv[1:]], stdin=stdin, timeout=self._opts.command_timeout_s, env=self._env()
        )

    def _job_dir(self, job_id: str) -> str:
        return f"{self._root}/jobs/{job_id}"

    # ------------------------------------------------------------------ submit

    async def submit(self, ctx: JobContext, defn: JobDefn) -> str:
        return (await self._submit([ctx], defn, inputs=None, array=False))[0]

    async def submit_array(
        self, ctxs: Sequence[JobContext], defn: JobDefn, inputs: Sequence[str] | None = None
    ) -> list[str]:
        """One Slurm job array: element i is the bus job ``ctxs[i]``, its native id ``ARRAYID_i``.

        "N times": N contexts; element i finds ``LWFM_ARRAY_INDEX=i``.  "For each input":
        also ``inputs[i]`` as ``LWFM_INPUT`` (one line of text each).
        """
        if not ctxs:
            raise SiteError("an array needs at least one element")
        if inputs is not None:
            if len(inputs) != len(ctxs):
                raise SiteError(f"{len(inputs)} inputs for {len(ctxs)} array elements")
            for text in inputs:
                if "\n" in text or "\x00" in text:
                    raise SiteError("an array input is one line of text (no newline or NUL)")
        return await self._submit(list(ctxs), defn, inputs=inputs, array=True)

    async def _submit(
        self, ctxs: list[JobContext], defn: JobDefn, *, inputs: Sequence[str] | None, array: bool
    ) -> list[str]:
        first = ctxs[0]
        known = [self.watcher.get(c.job_id) for c in ctxs]
        if all(k is not None and k.ctx.native_id for k in known):
            return [k.ctx.native_id or "" for k in known if k is not None]  # submitted before: once only
        d = f"{self._root}/arrays/{first.job_id}" if array else self._job_dir(first.job_id)
        env = job_environment(self._rt, first, defn, self._opts, home=self._home)
        await self._host.write_file(f"{d}/env", env_file(env))
        await self._host.write_file(f"{d}/job.sh", f"#!/bin/sh\n{WRAPPER}".encode())
        if array:
            await self._host.write_file(f"{d}/ids", "".join(f"{c.job_id}\n" for c in ctxs).encode())
            if inputs is not None:
                await self._host.write_file(f"{d}/inputs", "".join(f"{t}\n" for t in inputs).encode())
        out = f"{d}/%a" if array else d
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", defn.label())[:64] or "lwfm-job"
        sbatch = [
            self._program("sbatch"),
            "--parsable",
            f"--job-name={name}",
            f"--output={out}/stdout",
            f"--error={out}/stderr",
            f"--chdir={defn.cwd or d}",
            *([f"--array=0-{len(ctxs) - 1}"] if array else []),
            *sbatch_resource_args(defn.resources),
            *self._opts.sbatch_args,
            f"{d}/job.sh",
            d,
            *defn.command(),
        ]
        result = await self._host.run(
            ["/bin/sh", "-c", SLURM_SUBMIT, "lwfm-sbatch", d, str(len(ctxs) if array else 0), *sbatch],
            timeout=self._opts.command_timeout_s,
            env=self._env(),
        )
        m = _SUBMITTED.fullmatch(result.text())
        if result.returncode != 0 or m is None:
            raise CommandFailed(
                f"sbatch on {self._host.label}: unexpected answer (exit {result.returncode}): "
                f"{result.text()[:300]!r} {result.error_text()[:300]!r}"
            )
        outcome, detail = m[1], m[2]
        if outcome == "failed":
            raise CommandFailed(f"sbatch exited {detail} on {self._host.label}: {result.error_text()[:1000]}")
        native = parse_sbatch(detail) if outcome in ("submitted", "exists") and detail != "-" else None
        natives = [f"{native}_{i}" if array else native for i in range(len(ctxs))] if native else [None] * len(ctxs)
        for ctx, nid in zip(ctxs, natives, strict=True):
            ctx = ctx.model_copy(update={"native_id": nid})
            self.watcher.track(Tracked(ctx=ctx, job_dir=self._job_dir(ctx.job_id)))
            if outcome == "cancelled":
                await self.watcher.apply(ctx.job_id, Observation(JobState.CANCELLED, native_state="CANCELLED"))
            elif outcome == "submitted":
                await self.watcher.apply(ctx.job_id, Observation(JobState.PENDING, native_state="SUBMITTED"))
        if outcome == "exists":
            self.watcher.poke()  # submitted before (by us or another process): its state comes from Slurm
        return [n or "" for n in natives]

    # ------------------------------------------------------------------ status

    async def _squeue(self, natives: Sequence[str]) -> dict[str, SqueueRow]:
        """What slurmctld still knows about these jobs: one call per 500 ids."""
        rows: dict[str, SqueueRow] = {}
        for start in range(0, len(natives), _CHUNK):
            chunk = natives[start : start + _CHUNK]
            result = await self._slurm(
                [
                    "squeue",
                    "--noheader",
                    "--array",
                    "--states=all",
                    f"--jobs={','.join(chunk)}",
                    f"--format={SQUEUE_FORMAT}",
                ]
            )
            if result.returncode != 0:
                if _INVALID_JOB_ID in result.error_text() and not result.stdout.strip():
                    continue  # none of them is known any more
                raise CommandFailed(f"squeue exited {result.returncode}: {result.error_text()[:500]}")
            if result.stderr.strip():
                raise SlurmOutputError(f"squeue: unexpected error output {result.error_text()[:300]!r}")
            rows.update(parse_squeue(result.text()))
        return rows

    async def _job_files(self, dirs: Sequence[str]) -> list[tuple[int | None, bool]]:
        """``(recorded exit code, cancel requested)`` of each job directory, in one command."""
        if not dirs:
            return []
        result = await self._host.run(
            ["/bin/sh", "-c", JOB_FILES, "lwfm-files", *dirs], timeout=self._opts.command_timeout_s
        )
        lines = result.text().splitlines()
        if result.returncode != 0 or len(lines) != len(dirs) + 1 or lines[-1] != "end":
            raise CommandFailed(
                f"reading job directories on {self._host.label}: unexpected answer {result.text()[:300]!r}"
            )
        found: list[tuple[int | None, bool]] = []
        for i, line in enumerate(lines[:-1]):
            m = _FILES_LINE.fullmatch(line)
            if m is None or int(m[1]) != i:
                raise CommandFailed(f"reading job directories on {self._host.label}: unexpected line {line[:200]!r}")
            found.append((None if m[2] == "-" else int(m[2]), m[3] == "1"))
        return found

    async def _scontrol_exit(self, native: str) -> tuple[int, int] | None:
        """Slurm's own ExitCode=rc:signal, for a job that left no record (killed, timed out)."""
        try:
            result = await self._slurm(["scontrol", "--oneliner", "show", "job", native])
            if result.returncode != 0:
                return None
            return parse_scontrol_exit(result.text(), native)
        except SiteError as exc:
            log.warning("slurm site %s: %s", self._rt.site, exc)
            return None

    async def _sacct_rows(self, natives: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """Accounting's view of jobs squeue forgot; turned off for good on the first refusal."""
        if not self._sacct or not natives:
            return {}
        result = await self._slurm(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                f"--jobs={','.join(natives)}",
                "--format=JobID,State,ExitCode",
            ]
        )
        if result.returncode != 0:
            log.warning(
                "slurm site %s: sacct refused (%s); not asking it again", self._rt.site, result.error_text()[:300]
            )
            self._sacct = False
            return {}
        rows: dict[str, tuple[str, int, int]] = {}
        for line in result.text().splitlines():
            m = _SACCT_LINE.fullmatch(line.strip())
            if m is None:
                raise SlurmOutputError(f"sacct: unexpected line {line[:300]!r} (expected JOBID|STATE|RC:SIG)")
            rows[m[1]] = (m[2], int(m[3]), int(m[4]))
        return rows

    async def _learn_native_ids(self, jobs: Sequence[Tracked]) -> list[Tracked]:
        """Jobs whose submission another process finished: their Slurm id is in their directory."""
        learned: list[Tracked] = []
        for t in jobs:
            text = (await self._host.read_file(f"{t.job_dir}/native_id") or b"").decode(errors="replace")
            try:
                native = parse_sbatch(text)
            except SlurmOutputError:
                continue  # not submitted yet (or an array element): asked again at the next poll
            updated = t.model_copy(update={"ctx": t.ctx.model_copy(update={"native_id": native})})
            self.watcher.track(updated)
            learned.append(updated)
        return learned

    async def _query(self, jobs: Sequence[Tracked]) -> Mapping[str, Observation]:
        """One squeue for all; job directories (and scontrol) only for jobs that ended or vanished."""
        with_native = [t for t in jobs if t.ctx.native_id] + await self._learn_native_ids(
            [t for t in jobs if not t.ctx.native_id]
        )
        try:
            rows = await self._squeue([t.ctx.native_id for t in with_native if t.ctx.native_id])
        except SlurmOutputError as exc:
            # squeue answered, but not in words we know: an error on each job, not a guess
            return {t.ctx.job_id: Observation.problem(str(exc)) for t in with_native}
        found: dict[str, Observation] = {}
        ended: list[tuple[Tracked, SqueueRow | None]] = []
        for t in with_native:
            row = rows.get(t.ctx.native_id or "")
            if row is None:
                ended.append((t, None))
                continue
            mapped = canonical(row.state)
            if mapped is None:
                found[t.ctx.job_id] = Observation.problem(
                    f"squeue: unknown Slurm state {row.state!r} (still watching)", native_state=row.state
                )
            elif mapped[0].is_terminal:
                ended.append((t, row))
            else:
                found[t.ctx.job_id] = Observation(
                    mapped[0], native_state=row.state, native_info=_reason(row, mapped[1])
                )
        if ended:
            files = await self._job_files([t.job_dir for t, _ in ended])
            vanished = [t.ctx.native_id or "" for t, row in ended if row is None]
            sacct = await self._sacct_rows(vanished) if vanished else {}
            for (t, row), (code, cancelled) in zip(ended, files, strict=True):
                found[t.ctx.job_id] = await self._ended(t, row, code, cancelled, sacct.get(t.ctx.native_id or ""))
        return found

    async def _ended(
        self,
        t: Tracked,
        row: SqueueRow | None,
        code: int | None,
        cancelled: bool,
        sacct: tuple[str, int, int] | None,
    ) -> Observation:
        native = t.ctx.native_id or ""
        if row is not None:
            state, why = canonical(row.state) or (JobState.FAILED, None)
            signal = 0
            if code is None and state is not JobState.COMPLETE:
                rc_sig = await self._scontrol_exit(native)
                if rc_sig is not None:
                    code, signal = rc_sig if rc_sig[1] == 0 else (None, rc_sig[1])
            if state is JobState.COMPLETE and code not in (None, 0):
                state, why = JobState.FAILED, f"exit code {code}"
            info = _reason(row, why)
            if state is JobState.FAILED and code not in (None, 0) and row.state == "FAILED":
                info = f"exit code {code}"
            if signal:
                info = f"{info or row.state}; killed by signal {signal}"
            return Observation(state, native_state=row.state, native_info=info, exit_code=code)
        if sacct is not None:
            word, rc, sig = sacct
            mapped = canonical(word) or (JobState.FAILED, f"unknown Slurm state {word}")
            return Observation(mapped[0], native_state=word, native_info=mapped[1], exit_code=rc if sig == 0 else None)
        if cancelled:
            return Observation(JobState.CANCELLED, native_state="CANCELLED", native_info="cancelled", exit_code=code)
        if code is not None:
            if code == 0:
                return Observation(JobState.COMPLETE, native_state="COMPLETED", exit_code=0)
            return Observation(JobState.FAILED, native_state="FAILED", native_info=f"exit code {code}", exit_code=code)
        why = f"Slurm no longer knows job {native} and it left no exit code (killed, or purged after MinJobAge)"
        return Observation(JobState.FAILED, native_state="UNKNOWN", native_info=why)

    async def status(self, ctx: JobContext) -> JobState | None:
        tracked = self.watcher.get(ctx.job_id)
        native = ctx.native_id or (tracked.ctx.native_id if tracked else None)
        if native is None or not is_native_id(native):
            return None
        probe = Tracked(ctx=ctx.model_copy(update={"native_id": native}), job_dir=self._job_dir(ctx.job_id))
        obs = (await self._query([probe])).get(ctx.job_id)
        if obs is None:
            return None
        if obs.state is None:
            raise SiteError(f"status of job {ctx.job_id} ({native}): {obs.error}")
        if obs.native_state == "UNKNOWN":
            return None
        return obs.state

    async def cancel(self, ctx: JobContext) -> None:
        """Mark the job cancelled (so a submit in flight never reaches sbatch), then scancel it."""
        marked = await self._host.run(
            ["/bin/sh", "-c", MARK_CANCELLED, "lwfm-cancel", self._job_dir(ctx.job_id)],
            timeout=self._opts.command_timeout_s,
        )
        if marked.text().strip() != "marked":
            raise CommandFailed(
                f"cancel of job {ctx.job_id}: cannot mark it on {self._host.label}: {marked.error_text()}"
            )
        tracked = self.watcher.get(ctx.job_id)
        native = ctx.native_id or (tracked.ctx.native_id if tracked else None)
        if native is None:
            if tracked is not None:
                await self.watcher.apply(ctx.job_id, Observation(JobState.CANCELLED, native_state="CANCELLED"))
            return
        if not is_native_id(native):
            raise SiteError(f"cancel of job {ctx.job_id}: {native!r} is not a Slurm job id")
        result = await self._slurm(["scancel", native])
        if result.returncode != 0 and _INVALID_JOB_ID not in result.error_text():
            raise CommandFailed(f"scancel {native} exited {result.returncode}: {result.error_text()[:500]}")
        if tracked is None:
            self.watcher.track(
                Tracked(ctx=ctx.model_copy(update={"native_id": native}), job_dir=self._job_dir(ctx.job_id))
            )
        self.watcher.poke()  # the scheduler says CANCELLED within a poll; publish it then

    async def logs(self, ctx: JobContext, stream: LogStream = "stdout") -> bytes:
        return await self._host.read_file(f"{self._job_dir(ctx.job_id)}/{stream}") or b""

    async def put(self, local_path: Path, site_path: str) -> None:
        """Copy onto the cluster (SFTP over SSH, a copy here), verified by SHA-256."""
        await self._host.put(local_path, site_path)

    async def get(self, site_path: str, local_path: Path) -> None:
        """Copy off the cluster, verified by SHA-256."""
        await self._host.get(site_path, local_path)


def _reason(row: SqueueRow, why: str | None) -> str | None:
    """Slurm's reason (``Priority``, ``TimeLimit``, ...) with our words for the state."""
    reason = row.reason if row.reason and row.reason not in ("None", "(null)") else None
    if why and reason:
        return f"{why} ({reason})"
    return why or reason
