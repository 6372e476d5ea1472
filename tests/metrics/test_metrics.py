"""Metrics and health (issue 21, item 2): scraped over HTTP while real workflows run.

A real nats-server, a real engine replica and the real ``local`` agent, in process; the
endpoint is read with a plain HTTP client, as Prometheus would.  Every wait is on an
event or on the server's own counts (a consumer with nothing pending or unacked):
nothing sleeps, and nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._connect import connection_lost_for, connection_up
from lwfm_bus._bus._server import EmbeddedServer
from lwfm_bus._config import EmbeddedServerConfig
from lwfm_bus._metrics import MetricsSettings, Observed
from lwfm_bus._metrics._serve import serve_metrics
from tests._helpers import engine_idle, wait_state, write_sites

_ENGINE = lb.EngineConfig(ack_wait_s=5, dispatch_backoff_s=0.05)
_WORK_DETAILS = ("registered", "deadline", "tick", "fired", "expired", "failed")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    return await anyio.to_thread.run_sync(_get, url, headers)


async def _scrape(base: str) -> Samples:
    status, text = await _fetch(base + "metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _sum(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


async def _stored(bus: lb.Bus, subjects: str, details: Iterable[str] | None = None) -> int:
    """Messages in the event stream on ``subjects`` (whose last token is one of ``details``)."""
    info = await bus.jetstream.stream_info("LWFM", subjects_filter=subjects)
    wanted = None if details is None else set(details)
    return sum(
        count
        for subject, count in (info.state.subjects or {}).items()
        if wanted is None or subject.split(".")[-1] in wanted
    )


def _waiting_job(fifo: Path) -> lb.JobDefn:
    """A job that runs until the test writes a line into its FIFO (no sleep, no polling)."""
    os.mkfifo(fifo)
    return lb.JobDefn.of([sys.executable, "-c", "import sys; open(sys.argv[1]).read()", str(fifo)])


def _release(fifo: Path) -> None:
    with open(fifo, "w") as writer:  # blocks until the job opens it for reading
        writer.write("go\n")


async def test_counters_move_by_what_a_workflow_did(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    sites = write_sites(tmp_path / "sites.toml", {"local": {"max_concurrent": 1}})
    config = bus_config.model_copy(update={"sites_file": sites})
    observed = Observed(wants_engine=True, wants_agents=True)
    async with (
        lb.connect(config) as bus,
        lb.serve_engine(bus, _ENGINE) as engine,
        anyio.create_task_group() as tg,
    ):
        base = await tg.start(serve_metrics, MetricsSettings(port=0), observed)
        assert (await _fetch(base + "healthz"))[0] == 200
        status, body = await _fetch(base + "readyz")
        assert status == 503, body
        assert json.loads(body)["checks"]["nats_connected"] is False

        with observed.running(bus, engine, bus.agents):
            status, body = await _fetch(base + "readyz")
            assert (status, json.loads(body)["ready"]) == (200, True)

            # One slot at the site: one job runs, the next waits in the stream.
            fifo1, fifo2 = tmp_path / "f1", tmp_path / "f2"
            first = await bus.submit(_waiting_job(fifo1))
            await wait_state(bus, first.job_id, JobState.RUNNING)
            second = await bus.submit(_waiting_job(fifo2))
            busy = await _scrape(base)
            assert _value(busy, "lwfm_submissions_running", site="local") == 1
            assert _value(busy, "lwfm_submissions_queued", site="local") == 1
            assert _value(busy, "lwfm_consumer_pending", stream="LWFM_SUBMIT", consumer="lwfm-agent-local") == 1
            await anyio.to_thread.run_sync(_release, fifo1)
            await anyio.to_thread.run_sync(_release, fifo2)
            for job in (first, second):
                assert (await job.wait(timeout=30)).state is JobState.COMPLETE

            # A: three triggers, each starting one job once A completes.
            a_id = lb.new_id()
            downstream = [lb.new_id() for _ in range(3)]
            for job_id in downstream:
                await bus.set_job_trigger(lb.JobDefn.of(["true"]), a_id, job_id=job_id)
            await engine_idle(bus)
            before = await _scrape(base)
            jobs_before = await _stored(bus, "lwfm.*.job.>")
            triggers_before = await _stored(bus, "lwfm.*.trigger.>", _WORK_DETAILS)

            await bus.submit(lb.JobDefn.of(["true"]), job_id=a_id)
            for job_id in downstream:
                assert (await bus.wait(job_id, timeout=30)).state is JobState.COMPLETE
            # And one message on a job subject that is not an event: judged, then dead-lettered.
            await bus.jetstream.publish("lwfm.local.job._.not-an-event.COMPLETE", b"\xff not json", stream="LWFM")
            await engine_idle(bus)
            after = await _scrape(base)
            jobs_after = await _stored(bus, "lwfm.*.job.>")
            triggers_after = await _stored(bus, "lwfm.*.trigger.>", _WORK_DETAILS)

            def moved(name: str, **labels: str) -> float:
                return _value(after, name, **labels) - _value(before, name, **labels)

            assert moved("lwfm_engine_firings_total") == 3
            assert moved("lwfm_engine_expiries_total") == 0
            assert moved("lwfm_engine_failures_total") == 0
            assert moved("lwfm_engine_dispatch_latency_seconds_count") == 3
            assert moved("lwfm_engine_dispatch_latency_seconds_bucket", le="+Inf") == 3
            assert moved("lwfm_engine_dispatch_latency_seconds_sum") > 0
            # Every job event stored meanwhile (A's, the three downstream jobs', the bad one) was judged once.
            assert jobs_after - jobs_before >= 4 * 2 + 1
            assert moved("lwfm_engine_events_judged_total", kind="job") == jobs_after - jobs_before
            # The trigger events the engine works on: three "fired" here.
            assert triggers_after - triggers_before == 3
            assert moved("lwfm_engine_events_judged_total", kind="trigger") == 3
            assert _sum(after, "lwfm_dead_letters_total") - _sum(before, "lwfm_dead_letters_total") == 1
            assert _value(after, "lwfm_dead_letters_stored") == 1
            assert _value(after, "lwfm_consumer_pending", stream="LWFM", consumer="lwfm-engine") == 0
            assert _value(after, "lwfm_consumer_ack_pending", stream="LWFM", consumer="lwfm-engine") == 0
            assert _value(after, "lwfm_submissions_running", site="local") == 0
            assert _value(after, "lwfm_nats_connected") == 1
            assert _value(after, "lwfm_nats_reconnects_total") == bus.nats.stats["reconnects"] == 0

        status, body = await _fetch(base + "readyz")
        assert status == 503, body  # its parts stopped: no longer ready
        tg.cancel_scope.cancel()


async def test_a_token_guards_metrics_but_not_the_probes() -> None:
    async with anyio.create_task_group() as tg:
        base = await tg.start(serve_metrics, MetricsSettings(port=0, token="s3cret-token"), Observed())
        assert (await _fetch(base + "metrics"))[0] == 401
        assert (await _fetch(base + "metrics", {"Authorization": "Bearer wrong"}))[0] == 401
        status, text = await _fetch(base + "metrics", {"Authorization": "Bearer s3cret-token"})
        assert status == 200 and "lwfm_nats_connected 0.0" in text
        assert "s3cret-token" not in text
        assert (await _fetch(base + "healthz"))[0] == 200
        assert (await _fetch(base + "readyz"))[0] == 503  # nothing connected
        tg.cancel_scope.cancel()


async def test_beyond_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(lb.ConfigError, match="beyond loopback"):
        await serve_metrics(MetricsSettings(host="0.0.0.0", port=0), Observed())


async def test_an_outage_is_unready_and_the_reconnect_is_counted(tmp_path: Path) -> None:
    """The server stops: /readyz says 503; it comes back on its port: 200, and one reconnect is counted."""
    first = EmbeddedServer(EmbeddedServerConfig(port=0), tmp_path / "nats", name="lwfm-test")
    await first.start()
    port = first.port
    config = lb.BusConfig.model_validate({"servers": (first.url,), "home": tmp_path / "home", "agents": ()})
    observed = Observed()
    try:
        async with lb.connect(config) as bus, anyio.create_task_group() as tg:
            base = await tg.start(serve_metrics, MetricsSettings(port=0), observed)
            with observed.running(bus):
                assert (await _fetch(base + "readyz"))[0] == 200
                assert _value(await _scrape(base), "lwfm_nats_reconnects_total") == 0

                await first.stop()
                await asyncio.wait_for(connection_lost_for(bus.nats, 0), 30)
                status, body = await _fetch(base + "readyz")
                assert status == 503 and json.loads(body)["checks"] == {"nats_connected": False}
                down = await _scrape(base)  # still answers, with what it knows without the server
                assert _value(down, "lwfm_nats_connected") == 0

                first = EmbeddedServer(EmbeddedServerConfig(port=port), tmp_path / "nats", name="lwfm-test")
                await first.start()
                await asyncio.wait_for(connection_up(bus.nats), 30)
                assert (await _fetch(base + "readyz"))[0] == 200
                up = await _scrape(base)
                assert _value(up, "lwfm_nats_reconnects_total") == 1
                assert _value(up, "lwfm_nats_connected") == 1
            tg.cancel_scope.cancel()
    finally:
        await first.stop()
