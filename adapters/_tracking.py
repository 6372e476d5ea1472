"""Watching jobs that cannot tell the bus themselves: one batched query per interval.

A remote adapter records each unfinished job in its private state directory (so the
next process that opens the site adopts it), and one :class:`Watcher` per site asks
the site about *all* of them in a single query per interval -- one ``squeue`` for a
hundred Slurm jobs, one SSH command for a hundred SSH jobs -- never one per job.

What it publishes is a *transition*: a canonical state the job had not been reported
in yet, judged by the partial order, so a job first seen COMPLETE is reported
COMPLETE (with its exit code), and nothing is reported twice.  A query that fails
(host down, scheduler down) is logged and retried at the next interval; an answer
that cannot be understood for one job is logged once per problem.  Both make the site
DEGRADED, with the reason, through the runtime's health report (the agent publishes
it; ``status`` shows it where jobs wait), until a poll reads every answer again -- the
watcher itself never dies of it.

Polling is paced by news.  Without callbacks every hop of a chain across sites waits
for the site's next query, so a fixed interval (5 s by default) made a 3-site chain take
10 s.  Right after a job is submitted, or a job's state changes, the jobs of a site are
likely to change again soon (a short step ends within a second), so the watcher asks
after ``fast_s`` (0.5 s), then at gaps growing with the age of that news (half of it),
back to the interval after about 10 s (see :func:`next_poll_at`).  It is still one
batched query for all the site's jobs, never two within ``fast_s``: a burst of 100
submissions costs the same few queries as one.

Stopping never hangs.  On Python 3.11 a task cancelled while nats-py awaits a publish
inside ``asyncio.wait_for`` can lose the cancellation (``wait_for`` returns the inner
result when it is already done); so the loop's own waits use anyio's ``move_on_after``
(which never drops the caller's cancellation), the loop checks a stop flag at every
turn, and :meth:`Watcher.stop` cancels again until the loop ends, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from lwfm_bus import JobContext, JobState, SiteStatus, StatusReporter

from ._hosts import plain_error

__all__ = ["FAST_POLL_S", "JobStore", "Observation", "Tracked", "Watcher", "next_poll_at"]

FAST_POLL_S = 0.5
"""The first poll after news (a submission, a state change), and the least gap between two polls."""

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


def next_poll_at(last_poll: float | None, news_at: float | None, interval_s: float, fast_s: float | None) -> float:
    """When the next batched query is due (``time.monotonic()`` seconds).

    ``last_poll``: when the last one began (None: none since the site had no job);
    ``news_at``: the last submission or state change (None: none yet).  Without news
    or without ``fast_s`` (callback mode: jobs report themselves) this is the plain
    interval.  With news, the next query is ``fast_s`` after it, then each gap is half
    the age of that news -- 0.5, 1, 1.5, 2.25, 3.4 s... -- up to the interval; and two
    queries are never closer than ``fast_s``.
    """
    start = last_poll if last_poll is not None else news_at if news_at is not None else time.monotonic()
    if fast_s is None or news_at is None:
        return start + interval_s
    fast = min(fast_s, interval_s)
    gap = min(interval_s, max(fast, (start - news_at) / 2))
    return max(start + gap, news_at + fast)


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
        fast_s: float | None = FAST_POLL_S,
        health: Callable[[SiteStatus, str | None], None] | None = None,
    ) -> None:
        self.label = label
        self._health = health or (lambda status, reason: None)
        self._troubled = False  # this poll met output it could not read
        self.interval_s = interval_s
        self.fast_s = fast_s
        """None: no faster polls after news (callback mode, where jobs report their own end)."""
        self._query = query
        self._reporter = reporter
        self._store = store
        self._jobs: dict[str, Tracked] = {}
        self._problems: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._poked = False
        self._last_poll: float | None = None
        self._news_at: float | None = None
        self._lock = asyncio.Lock()
        self.polls = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ jobs

    def track(self, tracked: Tracked) -> None:
        """Watch a job (persisted first, so a crash right after still finds it)."""
        self._store.save(tracked)
        if not self._jobs:
            self._last_poll = None  # the loop idled without jobs: the interval starts now
            self._poked = False  # a poke with nothing to poll is spent
        self._jobs[tracked.ctx.job_id] = tracked
        self._news()

    def _news(self) -> None:
        """A submission or a state change: the site's jobs are likely to change soon; poll sooner."""
        self._news_at = time.monotonic()
        self._wake.set()  # the loop works out its next poll again

    def get(self, job_id: str) -> Tracked | None:
        return self._jobs.get(job_id) or self._store.get(job_id)

    def watched(self) -> list[Tracked]:
        return list(self._jobs.values())

    def poke(self) -> None:
        """Poll now instead of at the end of the interval (after a cancel, say)."""
        self._poked = True
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
                self._news()  # PENDING -> RUNNING: a short job ends soon

    async def _problem(self, tracked: Tracked, obs: Observation) -> None:
        # The site's trouble, not the job's: its health says it (shown wherever the job
        # waits), and the job keeps its state until an answer can be read.
        text = obs.error or "no state"
        self._troubled = True
        self._health(SiteStatus.DEGRADED, f"its status output cannot be read: {text}")
        seen = self._problems.setdefault(tracked.ctx.job_id, set())
        if text in seen:
            return
        seen.add(text)
        log.error("%s: job %s: %s", self.label, tracked.ctx.job_id, text)

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
        """Stop watching, within ``timeout`` seconds whatever the loop was awaiting.

        The cancel is repeated until the loop ends: one that lands inside nats-py's
        ``wait_for`` may be dropped (see the module's docstring).
        """
        self._stopping = True
        self._wake.set()  # an idle loop wakes, sees the flag and ends
        task, self._task = self._task, None
        if task is None:
            return
        deadline = time.monotonic() + timeout
        while not task.done() and time.monotonic() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        if not task.done():
            log.error("%s: the watcher did not stop within %gs; leaving it", self.label, timeout)
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s: the watcher ended with an error", self.label, exc_info=task.exception())

    async def poll_once(self) -> None:
        """One batched query for every watched job, then publish what changed."""
        jobs = list(self._jobs.values())
        if not jobs:
            return
        self.polls += 1
        self._last_poll = time.monotonic()
        try:
            found = await self._query(jobs)
        except Exception as exc:  # noqa: BLE001 - any failure of one poll is logged; the next one retries
            error = plain_error(exc)
            # Said once per outage (again only if the reason changes): a poll every few
            # seconds repeating one warning would bury everything else.
            level = logging.DEBUG if error == self.last_error else logging.WARNING
            log.log(level, "%s: status query failed (retrying every %gs): %s", self.label, self.interval_s, error)
            self.last_error = error
            self._health(SiteStatus.DEGRADED, f"its status query fails: {error}")
            return
        if self.last_error is not None:
            log.warning("%s: status queries work again", self.label)
        self.last_error = None
        self._troubled = False
        for job_id, obs in found.items():
            try:
                await self.apply(job_id, obs)
            except Exception:
                log.exception("%s: could not publish the state of job %s", self.label, job_id)
        if not self._troubled:
            self._health(SiteStatus.UP, None)

    def next_poll_at(self) -> float:
        """When the loop will query next (``time.monotonic()``), unless news or a poke comes first."""
        return next_poll_at(self._last_poll, self._news_at, self.interval_s, self.fast_s)

    async def _run(self) -> None:
        while not self._stopping:
            if not self._jobs:
                await self._wake.wait()  # idle: the first job (or stop) wakes it
            elif not self._poked:
                left = self.next_poll_at() - time.monotonic()
                if left > 0:
                    # Until the next poll is due, or news moves it: anyio's timeout, not
                    # asyncio.wait_for, which can drop a cancellation on Python 3.11.
                    with anyio.move_on_after(left):
                        await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            if self._jobs and (self._poked or self.next_poll_at() <= time.monotonic()):
                self._poked = False
                await self.poll_once()
