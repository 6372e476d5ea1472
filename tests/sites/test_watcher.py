"""A remote site's watcher stops when asked, whatever it is awaiting (issue: `submit --wait` hung).

On Python 3.11, ``asyncio.wait_for`` returns the inner result, and drops the caller's
cancellation, when the inner future is already done as the caller is cancelled; nats-py
awaits every JetStream publish that way.  A watcher cancelled inside its status report
then ran on, and closing the site never returned.  The race cannot be produced on
demand against a real server, so the reporter here is a fake that always loses the
cancellation, exactly as ``wait_for`` does when the race is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import lwfm_bus as lb
from adapters._tracking import JobStore, Observation, Tracked, Watcher


class _LosesCancellation:
    """A reporter whose publish completes as it is cancelled: the cancellation is lost.

    ``inside`` is set while a report is in flight, so a test can cancel right there.
    """

    def __init__(self) -> None:
        self.reports = 0
        self.inside = asyncio.Event()

    async def report(self, ctx: lb.JobContext, state: lb.JobState, **fields: Any) -> None:
        self.reports += 1
        self.inside.set()
        try:
            await asyncio.Event().wait()  # the publish in flight: where the cancellation lands ...
        except asyncio.CancelledError:
            return  # ... and is lost, as asyncio.wait_for loses it on 3.11 when the publish is already done
        finally:
            self.inside.clear()


async def _watching(tmp_path: Path, reporter: _LosesCancellation) -> Watcher:
    ticks = 0

    async def query(jobs: Sequence[Tracked]) -> Mapping[str, Observation]:
        nonlocal ticks
        ticks += 1  # a new job each poll, seen running: each poll reports
        watcher.track(Tracked(ctx=lb.JobContext(job_id=f"j{ticks + 1}", site="remote"), job_dir="/nowhere"))
        return {t.ctx.job_id: Observation(lb.JobState.RUNNING, native_state="running") for t in jobs}

    watcher = Watcher(label="test", interval_s=0.001, query=query, reporter=reporter, store=JobStore(tmp_path / "j"))
    watcher._store.open()
    await watcher.start()
    watcher.track(Tracked(ctx=lb.JobContext(job_id="j1", site="remote"), job_dir="/nowhere"))
    return watcher


async def _stops(watcher: Watcher) -> None:
    task = watcher._task
    assert task is not None
    await asyncio.wait_for(watcher.stop(), 10)  # returns, and in time
    assert task.done(), "the watcher's loop is still running after stop()"


async def test_a_watcher_stopped_inside_a_report_that_loses_the_cancellation_stops(tmp_path: Path) -> None:
    reporter = _LosesCancellation()
    watcher = await _watching(tmp_path, reporter)
    await asyncio.wait_for(reporter.inside.wait(), 10)  # the loop is publishing now
    await _stops(watcher)


@pytest.mark.parametrize("steps", range(0, 60, 7))
async def test_a_watcher_stops_at_any_point_of_its_loop(tmp_path: Path, steps: int) -> None:
    reporter = _LosesCancellation()
    watcher = await _watching(tmp_path, reporter)
    for _ in range(steps):  # let the loop run to a different point for each case
        await asyncio.sleep(0)
    await _stops(watcher)
