"""The ``local`` site: jobs as real subprocesses of this machine.

Each job gets a directory ``<state>/jobs/<job_id>/`` holding its definition, its
stdout and stderr (written by the process itself, so nothing is lost if we die), its
pid, and -- written by a tiny ``sh`` wrapper when the command ends -- its exit code.
Jobs run in their own session, so cancel can kill the whole process group, and so
they outlive the process that launched them.  A job directory is filled under
``staging/`` and renamed into place, so it is never seen half-written; ``active/``
holds one marker per unfinished job naming the site instance that owns it.

Whoever opens the site next adopts jobs whose launcher died: a job still running is
watched again (a pidfd on Linux: woken by the kernel, not by polling), a job that
ended meanwhile is reported from its exit-code file, a job that vanished without one
is FAILED with that reason, and a job that never started is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import IO, Any, BinaryIO, ClassVar

import anyio
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from .._aio import cancel_and_wait
from .._errors import SiteError
from .._identity import identity_env
from .._jobs import JobContext, JobDefn
from .._states import JobState
from ._protocol import LogStream, SiteRuntime, StatusReporter

__all__ = ["LocalSite", "conclude"]

log = logging.getLogger("lwfm_bus.local")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Runs the job as "$@" (never re-parsed by the shell) and records its pid and exit code.
# Each record ends with a newline, written by the same printf: a reader takes a record
# without its newline as not yet written (no `mv`, a process of its own, on the path of
# every job; the older records, `wrapper.pid` and `exit_code`, were complete by rename
# and are still read).  The script is a constant: no job data is ever interpolated into it.
# When nobody watches it any more -- the launcher process died, or the site that
# launched it was closed (its owner file is gone) -- the wrapper starts a small reporter
# so the job's end is still published (only orphans pay for that Python start-up).
# The agent's secrets given as environment variables (see lwfm_bus._secrets), and the runner
# that hands a job the ones it names: names, not secrets.
_SECRET_ENV = "LWFM_SECRET_"  # noqa: S105
_SECRET_RUNNER = "_secretrun.py"  # noqa: S105

# A command that cannot be found is one line, the same the pipeline step runner writes
# (``command not found: solvr``), with a shell's exit code; `command -v` is a builtin.
_WRAPPER = (
    'printf "%s\\n" "$$" > "$LWFM_JOB_DIR/wrapper_pid"; '
    'if command -v "$1" >/dev/null 2>&1; then "$@"; rc=$?; '
    'else printf "command not found: %s\\n" "$1" >&2; rc=127; fi; '
    'printf "%s\\n" "$rc" > "$LWFM_JOB_DIR/exit_status"; '
    'if ! kill -0 "$LWFM_LAUNCHER_PID" 2>/dev/null || [ ! -e "$LWFM_OWNER_FILE" ]; then '
    '"$LWFM_PYTHON" -m lwfm_bus._orphan >/dev/null 2>&1; fi; '
    "exit $rc"
)


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: PositiveInt = Field(
        default_factory=lambda: os.cpu_count() or 1, description="Jobs running at once; the rest wait PENDING."
    )
    kill_grace_s: PositiveFloat = Field(default=5.0, description="SIGTERM to SIGKILL delay on cancel.")


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a pid, to tell a job from a later process reusing its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start_time(pid)
    return started is None or now is None or now == started


def _try_lock(handle: IO[str]) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class LocalSite:
    """Run jobs as subprocesses here.  See the module docstring for the on-disk layout."""

    Options: ClassVar[type[BaseModel]] = LocalOptions

    def __init__(self, options: BaseModel, runtime: SiteRuntime) -> None:
        assert isinstance(options, LocalOptions)
        self._opts = options
        self._rt = runtime
        self._root = runtime.state_dir
        self._jobs = self._root / "jobs"
        self._active = self._root / "active"
        self._owners = self._root / "owners"
        self._staging = self._root / "staging"
        # One owner per opened site, not per process: a later site in the same process
        # must be able to adopt what an earlier, closed one left running.
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._owner_file = self._owners / f"{self._owner}.lock"
        self._running = 0
        self._waiting: OrderedDict[str, asyncio.Future[bool]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: dict[str, anyio.Event] = {}  # job id -> set once a stop under way has ended
        self._owner_lock: IO[str] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        for d in (self._jobs, self._active, self._owners, self._staging):
            d.mkdir(parents=True, exist_ok=True)
        if self._rt.role != "agent":
            return  # a client reads logs and copies files: it owns, adopts and runs nothing
        # Held for this process's life: it tells others our jobs have a live owner.
        self._owner_lock = open(self._owner_file, "a+")  # noqa: SIM115, ASYNC230
        _try_lock(self._owner_lock)
        await self._recover()

    async def close(self) -> None:
        """Stop watching; the jobs themselves keep running and will be adopted later."""
        self._closed = True
        stuck = await cancel_and_wait(list(self._tasks))
        for t in stuck:  # pragma: no cover - only a task shielding itself from every cancel
            log.error("local site: a job supervisor did not stop (%s); leaving it", t.get_name())
        if self._owner_lock is not None:
            self._owner_lock.close()
            with contextlib.suppress(OSError):
                self._owner_file.unlink()
            self._owner_lock = None

    def _spawn(self, coro: Coroutine[Any, Any, None], ctx: JobContext) -> None:
        """Supervise one job; close() cancels and awaits every supervisor, and a failing one is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("local job %s: supervisor failed", ctx.job_id, exc_info=t.exception())

        task.add_done_callback(done)

    # ------------------------------------------------------------------ submit / run

    def _dir(self, job_id: str) -> Path:
        return self._jobs / job_id

    async def submit(self, ctx: JobContext, defn: JobDefn) -> str:
        if self._rt.role != "agent":
            raise SiteError(f"site {self._rt.site!r} runs jobs through its agents only (submit them on the bus)")
        # File creation costs about a millisecond here: done off the event loop, so that
        # an engine sharing this loop is not held up by jobs being started.
        if not await anyio.to_thread.run_sync(self._prepare, ctx, defn):
            await self._resubmitted(ctx.job_id)
            return ctx.job_id
        # No PENDING of its own: the submitter said it (queued), and the agent hands a job
        # over only when the site has a free slot, so it starts at once.
        self._spawn(self._run(ctx, defn), ctx)
        return ctx.job_id

    def _prepare(self, ctx: JobContext, defn: JobDefn) -> bool:
        """Create the job's directory whole, or not at all; False if it exists already.

        The directory is filled in a staging place and renamed into ``jobs/``: the
        rename is atomic, so of two submits of one job id (engine replicas, a retry) one
        wins, and a submitter killed half-way never leaves a half-written job behind.
        """
        jobdir = self._dir(ctx.job_id)
        if jobdir.exists():
            return False
        # Unique per call: two submits of one id at once in one process must not share it.
        staging = self._staging / f"{ctx.job_id}.{self._owner}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            (staging / "defn.json").write_text(defn.model_dump_json())
            (staging / "context.json").write_text(ctx.model_dump_json())
            (staging / "owner").write_text(self._owner)
            try:
                staging.rename(jobdir)
            except OSError:  # it exists (and is not empty): another submit won
                return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._mark_active(ctx.job_id)
        return True

    async def _resubmitted(self, job_id: str) -> None:
        """A job id submitted again: normally nothing to do, unless its submitter died.

        An engine killed just after creating a job's directory leaves a job nobody runs
        (its firing is claimed but not settled, so the next engine submits it again):
        if the job's owner is dead and it never launched, it is adopted here and now.
        """
        jobdir = self._dir(job_id)
        async with self._recover_lock():
            marker = self._active / job_id
            try:
                owner = marker.read_text().strip()
            except OSError:
                if (jobdir / "launching").exists() or (jobdir / "cancel_requested").exists():
                    return  # it ran, or was cancelled, and was reported: the marker goes last
                owner = _read_or_empty(jobdir / "owner")
            if owner == self._owner or self._owner_alive(owner):
                log.info("local job %s was already submitted; not starting it again", job_id)
                return
            log.info("local job %s was submitted by a process that died; adopting it", job_id)
            self._mark_active(job_id)
        await self._adopt(job_id)

    def _mark_active(self, job_id: str) -> None:
        # Atomic: another process recovering at this instant must never read an empty owner.
        _write_atomic(self._active / job_id, self._owner)

    def _mark_done(self, job_id: str) -> None:
        with contextlib.suppress(OSError):
            (self._active / job_id).unlink()

    def _env(self, ctx: JobContext, defn: JobDefn, jobdir: Path) -> dict[str, str]:
        # The agent's own environment, but its LWFM_SECRET_* values (and the variables the site's
        # secret_env names): a job gets a secret only
        # by naming it, through the secret runner (which reads them and hides them again from
        # the command it starts) -- never every secret of the agent, by inheritance.
        runner = defn.argv is not None and len(defn.argv) > 1 and defn.argv[1].endswith(_SECRET_RUNNER)
        withheld = self._rt.withheld_env
        env = {k: v for k, v in os.environ.items() if runner or not (k.startswith(_SECRET_ENV) or k in withheld)}
        env.update(self._rt.job_env)
        env.update(defn.env)
        env.update(identity_env(ctx))
        env.update(
            {
                "LWFM_JOB_DIR": str(jobdir),
                "LWFM_LAUNCHER_PID": str(os.getpid()),
                "LWFM_OWNER_FILE": str(self._owner_file),
                "LWFM_PYTHON": sys.executable,
            }
        )
        return env

    async def _take_slot(self, job_id: str) -> bool:
        """Wait for a free slot, first come first served; False if the job was cancelled meanwhile."""
        if self._running < self._opts.max_concurrent and not self._waiting:
            self._running += 1
            return True
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = turn
        try:
            return await turn  # the slot was handed over by _release_slot (True) or cancel (False)
        except asyncio.CancelledError:
            self._waiting.pop(job_id, None)
            raise

    def _release_slot(self) -> None:
        self._running -= 1
        while self._waiting and self._running < self._opts.max_concurrent:
            _, turn = self._waiting.popitem(last=False)
            if not turn.done():
                self._running += 1
                turn.set_result(True)

    async def _run(self, ctx: JobContext, defn: JobDefn) -> None:
        jobdir = self._dir(ctx.job_id)
        if not await self._take_slot(ctx.job_id):
            return  # cancelled while queued: cancel() has reported it
        try:
            try:
                logs = await anyio.to_thread.run_sync(_prepare_launch, jobdir)
            except OSError as exc:
                await self._finish(ctx, JobState.FAILED, None, f"could not start: {exc}")
                return
            if logs is None:
                await self._finish(ctx, JobState.CANCELLED, None, "cancelled before it started")
                return
            try:
                with logs[0] as out, logs[1] as err:
                    proc = await asyncio.create_subprocess_exec(
                        "/bin/sh",
                        "-c",
                        _WRAPPER,
                        "lwfm-job",
                        *defn.command(),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        cwd=defn.cwd,
                        env=self._env(ctx, defn, jobdir),
                        start_new_session=True,
                    )
            except OSError as exc:
                await self._finish(ctx, JobState.FAILED, None, f"could not start: {exc}")
                return
            limit = defn.resources.time_limit_s
            cancel_requested = await anyio.to_thread.run_sync(_record_pid, jobdir, proc.pid, limit)
            ctx = ctx.model_copy(update={"native_id": str(proc.pid)})
            if cancel_requested:
                # A cancel that came between our check and the pid file saw no process
                # to kill: it is ours to stop (cancel writes the marker, then reads the pid).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
                await self._rt.reporter.report(ctx, JobState.RUNNING, native_state="running")
            try:
                async with anyio.create_task_group() as tg:
                    if limit is not None:  # most jobs have none: no timer, no read of the pid record
                        tg.start_soon(self._end_at_deadline, jobdir, proc.pid, _proc_start_time(proc.pid))
                    rc = await proc.wait()
                    await self._stopped(ctx.job_id)
                    tg.cancel_scope.cancel()
            except asyncio.CancelledError:
                _detach(proc)  # close(): stop watching, the job runs on
                raise
        finally:
            self._release_slot()
        await self._conclude(ctx, rc)

    async def _conclude(self, ctx: JobContext, rc: int | None) -> None:
        await conclude(self._dir(ctx.job_id), ctx, self._rt.reporter, rc)
        self._mark_done(ctx.job_id)

    async def _finish(self, ctx: JobContext, state: JobState, code: int | None, why: str | None) -> None:
        await self._rt.reporter.report(ctx, state, exit_code=code, native_info=why, native_state=state.value.lower())
        self._mark_done(ctx.job_id)

    # ------------------------------------------------------------------ recovery

    async def _recover(self) -> None:
        async with self._recover_lock():
            for entry in self._staging.iterdir():
                if not self._owner_alive(entry.name.split(".")[1] if entry.name.count(".") == 2 else ""):
                    shutil.rmtree(entry, ignore_errors=True)  # its submitter died filling it
            for entry in sorted(self._active.iterdir()):
                job_id = entry.name
                if job_id.startswith("."):
                    continue  # a marker being written (see _write_atomic)
                try:
                    owner = entry.read_text().strip()
                except OSError:
                    owner = ""

                if owner == self._owner or self._owner_alive(owner):
                    continue
                self._mark_active(job_id)  # ours now
                await self._adopt(job_id)

    @contextlib.asynccontextmanager
    async def _recover_lock(self) -> AsyncIterator[None]:
        """Serialises adoption between processes sharing this site's directory."""
        with open(self._root / "recover.lock", "a+") as lock:  # noqa: ASYNC230 - a lock file
            if fcntl is not None:
                await anyio.to_thread.run_sync(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
            yield

    def _owner_alive(self, owner: str) -> bool:
        """Whether the site instance ``owner`` still holds its lock (flock dies with its process)."""
        if not owner or "/" in owner or owner.startswith("."):
            return False
        path = self._owners / f"{owner}.lock"
        if not path.exists():
            return False
        with open(path, "a+") as probe:
            if _try_lock(probe):
                with contextlib.suppress(OSError):
                    path.unlink()  # stale: its process is gone
                return False
        return True

    async def _adopt(self, job_id: str) -> None:
        jobdir = self._dir(job_id)
        try:
            ctx = JobContext.model_validate_json((jobdir / "context.json").read_text())
            defn = JobDefn.model_validate_json((jobdir / "defn.json").read_text())
        except (OSError, ValueError) as exc:
            log.error("cannot adopt local job %s: unreadable job directory: %s", job_id, exc)
            self._mark_done(job_id)
            return
        found = await _launched_pid(jobdir)
        if found is None:
            log.info("local job %s never started before its launcher died; starting it now", job_id)
            self._spawn(self._run(ctx, defn), ctx)
            return
        pid, started = found
        ctx = ctx.model_copy(update={"native_id": str(pid)})
        if _read_exit_code(jobdir) is not None or not _alive(pid, started):
            log.info("local job %s ended while nobody watched; reporting it", job_id)
            await self._conclude(ctx, None)
            return
        log.info("re-attached to local job %s (pid %s)", job_id, pid)
        self._spawn(self._watch_foreign(ctx, pid, started), ctx)

    async def _watch_foreign(self, ctx: JobContext, pid: int, started: str | None) -> None:
        """Wait for a process that is not our child: its exit code comes from the wrapper's file."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._end_at_deadline, self._dir(ctx.job_id), pid, started)
            await _wait_pid_exit(pid, started)
            await self._stopped(ctx.job_id)
            tg.cancel_scope.cancel()
        await self._conclude(ctx, None)

    async def _end_at_deadline(self, jobdir: Path, pid: int, started: str | None) -> None:
        """At the job's deadline (if it has a time limit): SIGTERM, then SIGKILL after the grace.

        The ``timed_out`` marker comes first, so the job is concluded FAILED with the
        native state TIMEOUT (what a retry policy looks at) however it then exits.
        """
        found = await anyio.to_thread.run_sync(_deadline, jobdir)
        if found is None:
            return
        deadline, limit_s = found
        await anyio.sleep(max(0.0, deadline - time.time()))  # a timer, not synchronisation
        if not _alive(pid, started):
            return
        (jobdir / "timed_out").write_text(str(limit_s))
        await self._stop(jobdir.name, pid, started)

    async def _stop(self, job_id: str, pid: int, started: str | None) -> None:
        """Stop the job's process group (cancel, time limit); its watch concludes only after.

        The wrapper may die of the SIGTERM while its command ignores it: reporting the job
        ended then would be untrue for up to the grace, and the watch that ends with the
        wrapper must not cancel the SIGKILL of what is left -- hence shielded (bounded by
        the grace) and awaited by the watch (:meth:`_stopped`).
        """
        done = self._stopping.setdefault(job_id, anyio.Event())
        try:
            with anyio.CancelScope(shield=True):
                await _stop_group(pid, started, self._opts.kill_grace_s)
        finally:
            done.set()
            self._stopping.pop(job_id, None)

    async def _stopped(self, job_id: str) -> None:
        """Once a stop of the job under way (if any) has ended every process of it."""
        stopping = self._stopping.get(job_id)
        if stopping is not None:
            await stopping.wait()

    # ------------------------------------------------------------------ queries

    async def status(self, ctx: JobContext) -> JobState | None:
        jobdir = self._dir(ctx.job_id)
        if not jobdir.exists():
            return None
        code = _read_exit_code(jobdir)
        if code is not None:
            if (jobdir / "cancel_requested").exists():
                return JobState.CANCELLED
            return JobState.COMPLETE if code == 0 else JobState.FAILED
        pid_file = jobdir / "pid"
        if not pid_file.exists():
            return JobState.PENDING
        info = json.loads(pid_file.read_text())
        if _alive(int(info["pid"]), info.get("start")):
            return JobState.RUNNING
        return JobState.CANCELLED if (jobdir / "cancel_requested").exists() else JobState.FAILED

    async def cancel(self, ctx: JobContext) -> None:
        """SIGTERM the job's process group, SIGKILL it after a grace period."""
        jobdir = self._dir(ctx.job_id)
        if not jobdir.exists():
            return
        (jobdir / "cancel_requested").touch()
        pid_file = jobdir / "pid"
        if not pid_file.exists():
            # Still queued (here or in another process): it is cancelled now, not when a
            # slot frees.  Whoever runs it later sees the marker and never starts it; its
            # own CANCELLED report has the same event id, so the stream stores one.
            turn = self._waiting.pop(ctx.job_id, None)
            if turn is not None and not turn.done():
                turn.set_result(False)
            if _read_exit_code(jobdir) is None:
                await self._finish(ctx, JobState.CANCELLED, None, "cancelled before it started")
            return
        info = json.loads(pid_file.read_text())
        pid, started = int(info["pid"]), info.get("start")
        if not _alive(pid, started):
            return
        await self._stop(ctx.job_id, pid, started)

    async def logs(self, ctx: JobContext, stream: LogStream = "stdout") -> bytes:
        path = self._dir(ctx.job_id) / stream
        try:
            return await anyio.Path(path).read_bytes()
        except FileNotFoundError:
            return b""

    async def put(self, local_path: Path, site_path: str) -> None:
        if not site_path.startswith("/"):
            raise SiteError(f"local site path {site_path!r} is not absolute")
        await anyio.to_thread.run_sync(_copy_atomic, local_path, Path(site_path))

    async def get(self, site_path: str, local_path: Path) -> None:
        await anyio.to_thread.run_sync(_copy_atomic, Path(site_path), local_path)


async def conclude(jobdir: Path, ctx: JobContext, reporter: StatusReporter, rc: int | None) -> None:
    """Turn how a job's process ended into a canonical state, preferring the wrapper's record."""
    recorded = _read_exit_code(jobdir)
    code = recorded if recorded is not None else rc
    native: str | None = None
    if (jobdir / "cancel_requested").exists():
        state, why = JobState.CANCELLED, "cancelled"
    elif (jobdir / "timed_out").exists():
        limit = _read_or_empty(jobdir / "timed_out")
        state, why, native = JobState.FAILED, f"time limit of {limit}s reached (SIGTERM, then SIGKILL)", "TIMEOUT"
    elif code == 0:
        state, why = JobState.COMPLETE, None
    elif code is None:
        state, why = JobState.FAILED, "the process is gone and no exit code was recorded (killed, or its launcher died)"
    elif code < 0:
        state, why = JobState.FAILED, f"killed by signal {-code}"
    else:
        state, why = JobState.FAILED, f"exit code {code}"
    await reporter.report(ctx, state, exit_code=code, native_info=why, native_state=native or state.value.lower())


def _detach(proc: asyncio.subprocess.Process) -> None:
    """Let a job outlive the watcher that started it.

    asyncio kills a child whose transport is closed or garbage-collected while it
    runs; a job must survive its launcher (it is adopted later), so the transport is
    told the child is no longer its concern before it is closed.  This reaches into
    asyncio's private attributes: there is no public way to disown a child.
    """
    transport = getattr(proc, "_transport", None)
    popen = getattr(transport, "_proc", None)
    if popen is not None and popen.returncode is None:
        popen.returncode = 0  # only the Popen object's view; the wrapper records the real exit code
    if transport is not None:
        transport.close()


def _prepare_launch(jobdir: Path) -> tuple[BinaryIO, BinaryIO] | None:
    """Open the job's log files for the launch, or None if it was cancelled before it started."""
    if (jobdir / "cancel_requested").exists():
        return None
    (jobdir / "launching").touch()  # from here on the job may run: adoption must look before restarting
    out = open(jobdir / "stdout", "ab")  # noqa: SIM115 - handed to the caller, who closes it
    try:
        return out, open(jobdir / "stderr", "ab")
    except BaseException:
        out.close()
        raise


async def _stop_group(pid: int, started: str | None, grace_s: float) -> None:
    """SIGTERM the job's process group; SIGKILL what of it is left after ``grace_s``.

    The wrapper leads the group: it may die of the SIGTERM while its command ignores it,
    so the end of the wrapper is not the end of the job -- the group is checked too.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with anyio.move_on_after(grace_s):
        await _wait_pid_exit(pid, started)
        while _group_alive(pid):  # noqa: ASYNC110 - no kernel wake-up for a process group's end
            await anyio.sleep(0.05)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record_pid(jobdir: Path, pid: int, limit_s: int | None = None) -> bool:
    """Write the pid file, then tell whether a cancel came meanwhile (it saw no process to kill).

    A time limit becomes a wall-clock deadline in the same file: whoever watches the job
    -- this process, or an agent that adopts it after a restart -- ends it then.
    """
    record: dict[str, object] = {"pid": pid, "start": _proc_start_time(pid)}
    if limit_s is not None:
        record.update(deadline=time.time() + limit_s, limit_s=limit_s)
    (jobdir / "pid").write_text(json.dumps(record))
    return (jobdir / "cancel_requested").exists()


def _deadline(jobdir: Path) -> tuple[float, int] | None:
    """The job's wall-clock deadline and its time limit, if it has one."""
    try:
        info = json.loads((jobdir / "pid").read_text())
        return float(info["deadline"]), int(info["limit_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy through a temporary file beside the target: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def _launched_pid(jobdir: Path, grace_s: float = 5.0) -> tuple[int, str | None] | None:
    """The job's pid if its (dead) launcher started it, else None: it never ran.

    The launcher records the pid after the fork; the wrapper records its own pid as
    its first act.  A launcher killed between the two leaves only a ``launching``
    marker: the wrapper, if it was forked, writes its pid within milliseconds, so we
    give it a few seconds before concluding the fork never happened.
    """
    pid_file = jobdir / "pid"
    if pid_file.exists():
        info = json.loads(pid_file.read_text())
        return int(info["pid"]), info.get("start")
    if _wrapper_pid(jobdir) is None and _read_exit_code(jobdir) is None and (jobdir / "launching").exists():
        with anyio.move_on_after(grace_s):
            while _wrapper_pid(jobdir) is None and _read_exit_code(jobdir) is None:  # noqa: ASYNC110 - recovery
                await anyio.sleep(0.05)
    pid = _wrapper_pid(jobdir)
    if pid is not None:
        return pid, _proc_start_time(pid)
    if _read_exit_code(jobdir) is not None:
        return 0, None  # it ran and ended; its exit code says how
    return None


def _record(jobdir: Path, name: str, legacy: str) -> int | None:
    """A number the wrapper recorded: complete when its newline is there (or, legacy, by rename)."""
    try:
        text = (jobdir / name).read_text()
        if text.endswith("\n"):
            return int(text)
    except (OSError, ValueError):
        pass
    try:
        return int((jobdir / legacy).read_text().strip())
    except (OSError, ValueError):
        return None


def _wrapper_pid(jobdir: Path) -> int | None:
    return _record(jobdir, "wrapper_pid", "wrapper.pid")


def _read_exit_code(jobdir: Path) -> int | None:
    return _record(jobdir, "exit_status", "exit_code")


async def _wait_pid_exit(pid: int, started: str | None) -> None:
    """Wait for a pid that may not be our child to exit.

    On Linux a pidfd becomes readable when the process exits: the kernel wakes us.
    Elsewhere we fall back to checking once a second.
    """
    if sys.platform == "linux" and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if not _alive(pid, started):
                return
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not gone.done():
                    gone.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await gone
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        return
    while _alive(pid, started):  # noqa: ASYNC110 - non-Linux fallback: no pidfd to wait on
        await asyncio.sleep(1.0)
