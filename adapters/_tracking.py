"""Watching jobs that cannot tell the bus themselves: one batched query per interval.

A remote adapter records each unfinished job in its private state directory (so the
next process that opens the site adopts it), and one :class:`Watcher` per site asks
the site about *all* of them in a single query per interval -- one ``squeue`` for a
hundred Slurm jobs, one SSH command for a hundred SSH jobs -- never one per job.

What it publishes is a *transition*: a canonical state the job had not been reported
in yet, judged by the partial order, so a job first seen COMPLETE is reported
COMPLETE (with its exit code), and nothing is reported twice.  A query that fails
(host down, scheduler down) is logged and retried at the next interval; an answer
that cannot be understood for one job becomes an INFO event on that job naming the
problem, once -- the watcher itself never dies of it.

Stopping never hangs.  On Python 3.11 a task cancelled while nats-py awaits a publish
inside ``asyncio.wait_for`` can lose the cancellation (``wait_for`` returns the inner
result when it is already done); so the loop also checks a stop flag at every turn,
and :meth:`Watcher.stop` waits a bounded time for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from lwfm_bus import JobContext, JobState, StatusReporter

__all__ = ["JobStore", "Observation", "Tracked", "Watcher"]

log = logging.getLogger("lwfm_bus.adapters.watch")


class Tracked(BaseModel):
    """An unfinished job as its adapter remembers it (persisted, so it survives a restart)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ctx: JobContext
    job_dir: str
    reported: JobState | None = None
    native_state: str | None = None


@dataclass(frozen=True)
class Observation:
    """What one query said about one job: a canonical state, or why it could not say."""

    state: JobState | None
    native_state: str | None = None
    native_info: str | None = None
    exit_code: int | None = None
    error: str | None = None

    @classmethod
    def problem(cls, error: str, native_state: str | None = None) -> Observation:
        return cls(state=None, native_state=native_state, error=error)


Query = Callable[[Sequence[Tracked]], Awaitable[Mapping[str, Observation]]]


class JobStore:
    """One JSON file per unfinished job under ``<state_dir>/jobs``; written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, tracked: Tracked) -> None:
        path = self.root / f"{tracked.ctx.job_id}.json"
        tmp = self.root / f".{tracked.ctx.job_id}.{os.getpid()}.tmp"
        tmp.write_text(tracked.model_dump_json())
        tmp.replace(path)

    def get(self, job_id: str) -> Tracked | None:
        try:
            return Tracked.model_validate_json((self.root / f"{job_id}.json").read_text())
        except FileNotFoundError:
            return None

    def remove(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{job_id}.json").unlink()

    def load_all(self) -> list[Tracked]:
        found: list[Tracked] = []
        for path in sorted(self.root.glob("*.json")):
            try:
                found.append(Tracked.model_validate_json(path.read_text()))
            except (OSError, ValidationError) as exc:
                log.error("unreadable job record %s (ignored): %s", path, exc)
        return found


class Watcher:
    """Publishes the transitions of a site's unfinished jobs, polling them as one batch."""

    def __init__(
        self,
        *,
        label: str,
        interval_s: float,
        query: Query,
        reporter: StatusReporter,
        store: JobStore,
    ) -> None:
        self.label = label
        self.interval_s = interval_s
        self._query = query
        self._reporter = reporter
        self._store = store
        self._jobs: dict[str, Tracked] = {}
        self._problems: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self.polls = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ jobs

    def track(self, tracked: Tracked) -> None:
        """Watch a job (persisted first, so a crash right after still finds it)."""
        self._store.save(tracked)
        self._jobs[tracked.ctx.job_id] = tracked
        if len(self._jobs) == 1:
            self._wake.set()  # the loop idles without jobs: start the interval now

    def get(self, job_id: str) -> Tracked | None:
        return self._jobs.get(job_id) or self._store.get(job_id)

    def watched(self) -> list[Tracked]:
        return list(self._jobs.values())

    def poke(self) -> None:
        """Poll now instead of at the end of the interval (after a cancel, say)."""
        self._wake.set()

    async def apply(self, job_id: str, obs: Observation) -> None:
        """Publish what ``obs`` says about a watched job, if it is news."""
        async with self._lock:
            tracked = self._jobs.get(job_id)
            if tracked is None:
                return
            if obs.state is None:
                await self._problem(tracked, obs)
                return
            if tracked.reported is not None and (
                obs.state is tracked.reported or not obs.state.supersedes(tracked.reported)
            ):
                return
            await self._reporter.report(
                tracked.ctx,
                obs.state,
                native_state=obs.native_state,
                native_info=obs.native_info,
                exit_code=obs.exit_code,
            )
            if obs.state.is_terminal:
                self._jobs.pop(job_id, None)
                self._problems.pop(job_id, None)
                self._store.remove(job_id)
            else:
                updated = tracked.model_copy(update={"reported": obs.state, "native_state": obs.native_state})
                self._jobs[job_id] = updated
                self._store.save(updated)

    async def _problem(self, tracked: Tracked, obs: Observation) -> None:
        text = obs.error or "no state"
        seen = self._problems.setdefault(tracked.ctx.job_id, set())
        if text in seen:
            return
        seen.add(text)
        log.error("%s: job %s: %s", self.label, tracked.ctx.job_id, text)
        await self._reporter.report(
            tracked.ctx, JobState.INFO, native_state=obs.native_state, info=f"site error: {text}"[:4000]
        )

    # ------------------------------------------------------------------ the loop

    async def start(self) -> None:
        """Watch again what the store holds (a previous process's unfinished jobs), then keep watching.

        Jobs that ended meanwhile are reported before this returns.
        """
        adopted = self._store.load_all()
        for tracked in adopted:
            self.track(tracked)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"watch {self.label}")
        if adopted:
            await self.poll_once()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, within ``timeout`` seconds whatever the loop was awaiting."""
        self._stopping = True
        self._wake.set()  # an idle loop wakes, sees the flag and ends
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.error("%s: the watcher did not stop within %gs; leaving it", self.label, timeout)
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s: the watcher ended with an error", self.label, exc_info=task.exception())

    async def poll_once(self) -> None:
        """One batched query for every watched job, then publish what changed."""
        jobs = list(self._jobs.values())
        if not jobs:
            return
        self.polls += 1
        try:
            found = await self._query(jobs)
        except Exception as exc:  # noqa: BLE001 - any failure of one poll is logged; the next one retries
            error = f"{type(exc).__name__}: {exc}"
            # Said once per outage (again only if the reason changes): a poll every few
            # seconds repeating one warning would bury everything else.
            level = logging.DEBUG if error == self.last_error else logging.WARNING
            log.log(level, "%s: status query failed (retrying every %gs): %s", self.label, self.interval_s, error)
            self.last_error = error
            return
        if self.last_error is not None:
            log.warning("%s: status queries work again", self.label)
        self.last_error = None
        for job_id, obs in found.items():
            try:
                await self.apply(job_id, obs)
            except Exception:
                log.exception("%s: could not publish the state of job %s", self.label, job_id)

    async def _run(self) -> None:
        while not self._stopping:
            if not self._jobs:
                await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                # the interval between scheduler queries (the scheduler has no events to wait on)
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            if not self._stopping:
                await self.poll_once()
