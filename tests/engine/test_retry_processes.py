"""A retry is a firing: an engine process SIGKILLed while retrying leaves the next attempt run exactly once.

The engines are ``lwfm-bus engine`` processes on a real nats-server; the test's own
connection runs the local site's agent.  The job counts its runs in a file.  The
crash is a real SIGKILL the engine sends itself at a named point of the retry (its
``--crash-at`` switch), so the point is exact; a fresh engine then takes over.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._engine._store import FiringState
from lwfm_bus.testing import hold_connection
from tests._helpers import job_events
from tests.engine.test_engine_processes import _engines, _settled

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and process groups")

_FLAKY = (
    "import sys; p = sys.argv[1]; open(p, 'a').write('ran\\n'); "
    "sys.exit(1 if len(open(p).read().splitlines()) == 1 else 0)"
)


@pytest_asyncio.fixture
async def client(bus_config: lb.BusConfig) -> AsyncIterator[lb.Bus]:
    """The test's connection: it runs the local agent, never an engine (only the processes judge)."""
    async with hold_connection(bus_config.model_copy(update={"engine": "off"})) as bus:
        yield bus


@pytest.mark.parametrize("point", ["after-claim", "after-submit"])
async def test_an_engine_killed_while_retrying_leaves_the_next_attempt_run_once(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path, point: str
) -> None:
    counter = tmp_path / "runs"
    defn = lb.JobDefn(
        argv=(sys.executable, "-c", _FLAKY, str(counter)),
        retry=lb.RetryPolicy(max_attempts=3, backoff_s=0, jitter=0),
    )
    async with _engines(bus_config) as engines:
        crashing = await engines.start("--crash-at", point)
        job = await client.submit(defn)
        rc = await crashing.exited(timeout=60)
        assert rc == -signal.SIGKILL, crashing.log
        assert f"crash point {point} reached" in crashing.log

        await engines.start()
        final = await job.wait(timeout=90)
        assert (final.state, final.attempt) == (JobState.COMPLETE, 2), final
        assert len(counter.read_text().splitlines()) == 2, "the first attempt and one retry, each run once"
        states = [s.state for s in await job_events(client, final.job_id)]
        assert states.count(JobState.READY) == 1 and states.count(JobState.COMPLETE) == 1, states

        # The fresh engine finished the dead one's claim (woken by the claims bucket's watch).
        key = f"retry:{final.job_id}"
        record = (await _settled(client, [key], timeout=60))[key]
        assert (record.state, record.job_id) == (FiringState.DONE, final.job_id)
