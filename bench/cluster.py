"""Sizing for a group: the bus on a 3-node NATS cluster at 3 replicas vs one nats-server (1 replica), same run.

Two deployments, one after the other, each measured the same way:

- ``single``: one nats-server on a free loopback port (as every other benchmark), the
  bus at ``replicas = 1``;
- ``cluster``: three nats-servers on loopback, started from the configuration
  ``lwfm-bus cluster init`` generates (tests/cluster/_nodes.py, as tests/cluster runs
  them), the bus at ``replicas = 3``: every stream and bucket kept three times, each
  write acknowledged once a majority of the nodes has stored it.  All three nodes, the
  bench process and the agent process share this machine's cores, so the figures are
  the cluster's cost in round trips and CPU, not a network's.

On each, in this order (one fresh stream per deployment):

1. **firings/s** (claim + stored submission + events), as ``bench.firings`` measures
   them: N job triggers registered and digested, N upstream COMPLETE events published,
   then a fresh engine replica timed from its first upstream event to the last of the
   4 N events it judges; the downstream site is served by an agent that only answers
   pings.
2. **a fan-out / fan-in DAG** of no-op jobs (``bench.dag``'s shape, smaller): one root,
   ``leaves`` jobs after it, joined in groups of ``group``, one sink; two agents of the
   local site (the one in this process and one ``lwfm-bus agent`` process, each with
   its own home), ``max_concurrent`` = cores; clock from submitting the root to the
   sink's COMPLETE.
3. **event publish -> ack**: ``bus.publish`` of job events, each with its own id
   (``Nats-Msg-Id``), K awaiting their acks at once (the bus's own publish path; no
   engine or agent is running meanwhile); also one at a time (details and note).

Each figure is the cluster's; its baseline is the single server's, and the ratio is
cluster / single.  No figure has a target: they are sizing information.

    .venv/bin/python -m bench.cluster [--firings 2000] [--leaves 1000] [--group 50] [--events 20000] [--no-dag]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lwfm_bus as lb
from bench._common import (
    Figure,
    bulk_publish,
    cpu_seconds,
    figure,
    log,
    ping_only_agent,
    probed_engine,
    registration,
    scaled,
    write_sites_file,
)
from bench.dag import dag_triggers, warm_up
from lwfm_bus._bus._eventbus import STREAM, SUBMIT_STREAM
from lwfm_bus.testing import start_test_server
from tests._helpers import cli_env
from tests.cluster._nodes import CLI, Process, running_nodes, spawn

ITEM = "cluster"
_SITE = "noop"  # as in bench.firings: served by an agent that only answers pings
_DOWN = lb.Downstream(job=lb.JobDefn.of(["true"]), site=_SITE)
_EVENTS_PER_FIRING = 4  # the upstream's COMPLETE, then READY, PENDING and trigger.fired come back
_ENGINE_CONSUMER = "lwfm-engine"


@dataclass
class Deployment:
    """Where a bus runs: its URLs, its login (for a CLI process), its servers' pids, its replicas."""

    label: str
    urls: tuple[str, ...]
    login: dict[str, str]
    server_pids: list[int]
    replicas: int
    spawned: list[Process] = field(default_factory=list)

    def config(self, home: Path, **overrides: object) -> lb.BusConfig:
        base: dict[str, object] = {
            "servers": self.urls,
            "home": home,
            "engine": "off",
            "autostart": "off",
            "replicas": self.replicas,
            "agents": (),
        }
        if "LWFM_BUS_USER" in self.login:
            base.update(user=self.login["LWFM_BUS_USER"], password=self.login["LWFM_BUS_PASSWORD"])
        return lb.BusConfig.model_validate({**base, **overrides})

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment of an ``lwfm-bus`` process on this deployment (no other LWFM_* setting)."""
        return cli_env(
            **self.login, LWFM_BUS_URL=",".join(self.urls), LWFM_BUS_REPLICAS=str(self.replicas),
            LWFM_BUS_AUTOSTART="off", LWFM_BUS_ENGINE="off", **extra,
        )  # fmt: skip

    def servers_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.server_pids)


@contextlib.asynccontextmanager
async def single_server(tmp: Path) -> AsyncIterator[Deployment]:
    async with start_test_server(tmp / "nats") as server:
        assert server.pid is not None
        yield Deployment("single", (server.url,), {}, [server.pid], replicas=1)


@contextlib.asynccontextmanager
async def three_nodes(tmp: Path) -> AsyncIterator[Deployment]:
    async with running_nodes(tmp / "nodes") as cluster:
        login = {k: v for k, v in cluster.env.items() if k in ("LWFM_BUS_USER", "LWFM_BUS_PASSWORD")}
        pids = [p.proc.pid for p in cluster.servers.values()]
        yield Deployment("cluster", cluster.urls, login, pids, replicas=3)


class _Window:
    """Wall time and CPU (this process, every server of the deployment) over one timed window."""

    def __init__(self, where: Deployment) -> None:
        self._where = where
        self._t0, self._me0, self._servers0 = time.perf_counter(), cpu_seconds(), where.servers_cpu()

    def stop(self) -> dict[str, float]:
        return {
            "wall_s": round(time.perf_counter() - self._t0, 3),
            "bench_process_cpu_s": round(cpu_seconds() - self._me0, 2),
            "servers_cpu_s": round(self._where.servers_cpu() - self._servers0, 2),
        }


async def _engine_idle(bus: lb.Bus, timeout: float) -> None:
    """Until the engines' consumer has nothing pending or unacked (every event so far judged)."""

    async def drained() -> None:
        while True:  # one server round trip per check, a short pause between them
            info = await bus.jetstream.consumer_info(STREAM, _ENGINE_CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(drained(), timeout)


# --------------------------------------------------------------------------- 1. firings


async def firings(where: Deployment, tmp: Path, count: int, timeout: float) -> dict[str, Any]:
    """``bench.firings``' measurement on ``where``: firings/s of a fresh engine replica."""
    async with lb.connect(where.config(tmp / "home-firings"), name="lwfm-bench") as bus, ping_only_agent(bus, _SITE):
        replicas = bus.replicas
        engine_cfg = lb.EngineConfig()
        triggers = [
            lb.JobTrigger(trigger_id=f"t{i}", upstream=lb.Upstream(job_id=f"up{i}"), downstream=_DOWN)
            for i in range(count)
        ]
        await bulk_publish(bus, (registration(t) for t in triggers))
        async with probed_engine(bus, engine_cfg, measured=lambda _subject: False, fast_registration=True) as (
            engine,
            probe,
        ):
            await probe.wait_for(lambda: probe.done >= count, timeout)
            assert len(engine.index) == count
        await bulk_publish(
            bus,
            (
                lb.make_event(lb.JobStatus(job_id=f"up{i}", site="local", state=lb.JobState.COMPLETE), source="/bench")
                for i in range(count)
            ),
        )
        async with probed_engine(bus, engine_cfg) as (engine, probe):
            await probe.wait_for(
                lambda: probe.done >= _EVENTS_PER_FIRING * count and engine.stats.fired >= count, timeout
            )
            stats = engine.stats
        stored = (await bus.jetstream.stream_info(SUBMIT_STREAM)).state.messages
        submit_replicas = (await bus.jetstream.stream_info(SUBMIT_STREAM)).config.num_replicas
    rate = count / (probe.last_end - (probe.first_start or probe.last_end))
    return {
        "firings": count,
        "fired": stats.fired,
        "submissions_stored": stored,
        "bus_replicas": replicas,
        "submit_stream_replicas": submit_replicas,
        "errors": stats.errors,
        "events_judged": probe.done,
        "firing_rate": round(rate, 1),
    }


# --------------------------------------------------------------------------- 2. DAG


async def dag(where: Deployment, tmp: Path, leaves: int, group: int, timeout: float) -> dict[str, Any]:
    """A fan-out / fan-in DAG through two agents (this process's and an ``lwfm-bus agent`` process)."""
    concurrency = os.cpu_count() or 1
    sites = write_sites_file(tmp / "sites.toml", concurrency)
    agent = await spawn(
        f"agent-{where.label}", *CLI, "--home", str(tmp / "home-agent"), "agent", "--site", "local",
        env=where.cli_env(LWFM_BUS_SITES=str(sites)),
    )  # fmt: skip
    where.spawned.append(agent)
    await agent.ready("agent for local", timeout)
    config = where.config(tmp / "home-dag", agents=("local",), sites_file=sites)
    async with lb.connect(config, name="lwfm-bench") as bus:
        await warm_up(bus, 4 * concurrency, timeout)
        root, sink, triggers = dag_triggers(leaves, group)
        jobs = 1 + leaves + -(-leaves // group) + 1
        await bulk_publish(bus, (registration(t) for t in triggers))
        async with probed_engine(bus, measured=lambda _s: False, fast_registration=True) as (engine, _probe):
            await _engine_idle(bus, timeout)  # every registration digested (and what earlier phases left)
            window = _Window(where)
            agent_cpu0 = cpu_seconds(agent.proc.pid)
            await bus.submit(lb.JobDefn.of(["true"]), job_id=root)
            status = await bus.wait(sink, timeout=timeout)
            cpu = window.stop()
            cpu["agent_process_cpu_s"] = round(cpu_seconds(agent.proc.pid) - agent_cpu0, 2)
            fired = engine.stats.fired
    await agent.stop()
    return {
        "jobs": jobs,
        "leaves": leaves,
        "group": group,
        "concurrency": concurrency,
        "sink_state": status.state.value,
        "seconds": round(cpu["wall_s"], 2),
        "jobs_per_s": round(jobs / cpu["wall_s"], 1),
        "triggers": len(triggers),
        "fired": fired,
        "window_cpu": cpu,
    }


# --------------------------------------------------------------------------- 3. publish -> ack


def _events(tag: str, count: int) -> list[lb.Event]:
    return [
        lb.make_event(
            lb.JobStatus(job_id=f"{tag}-{i}", site="local", state=lb.JobState.RUNNING), source="/bench",
            id=f"{tag}-{i}",
        )
        for i in range(count)
    ]  # fmt: skip


async def _publish_all(bus: lb.Bus, events: list[lb.Event], inflight: int) -> tuple[float, list[float]]:
    """Seconds to publish ``events`` with ``inflight`` awaiting their acks at once, and each one's latency."""
    todo = iter(events)
    latencies: list[float] = []

    async def worker() -> None:
        for event in todo:
            t = time.perf_counter()
            ack = await bus.publish(event)
            latencies.append(time.perf_counter() - t)
            if ack.duplicate:
                raise RuntimeError(f"event {event.id} was taken for a duplicate")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - t0, latencies


async def publish(where: Deployment, tmp: Path, count: int, inflight: int, timeout: float) -> dict[str, Any]:
    serial_count = max(50, count // 10)
    async with lb.connect(where.config(tmp / "home-publish"), name="lwfm-bench") as bus:
        replicas = (await bus.jetstream.stream_info(STREAM)).config.num_replicas
        async with asyncio.timeout(timeout):
            await _publish_all(bus, _events("warm", 100), inflight)
            serial_s, serial_lat = await _publish_all(bus, _events("one", serial_count), 1)
            events = _events("many", count)
            window = _Window(where)
            many_s, many_lat = await _publish_all(bus, events, inflight)
            cpu = window.stop()
    return {
        "events": count,
        "inflight": inflight,
        "stream_replicas": replicas,
        "rate": round(count / many_s),
        "latency_p50_ms": round(1000 * statistics.median(many_lat), 2),
        "serial_events": serial_count,
        "serial_rate": round(serial_count / serial_s),
        "serial_latency_p50_ms": round(1000 * statistics.median(serial_lat), 2),
        "window_cpu": cpu,
    }


# --------------------------------------------------------------------------- both deployments


async def measure(where: Deployment, tmp: Path, sizes: dict[str, int], timeout: float, dag_too: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"replicas": where.replicas, "servers": len(where.server_pids)}
    try:
        log(f"{where.label}: firings")
        out["firings"] = await firings(where, tmp / "firings", sizes["firings"], timeout)
        if dag_too:
            log(f"{where.label}: DAG")
            out["dag"] = await dag(where, tmp / "dag", sizes["leaves"], sizes["group"], timeout)
        log(f"{where.label}: publish")
        out["publish"] = await publish(where, tmp / "publish", sizes["events"], sizes["inflight"], timeout)
    finally:
        for proc in where.spawned:
            await proc.stop()
    return out


async def run(sizes: dict[str, int], tmp: Path, timeout: float = 120.0, dag_too: bool = True) -> dict[str, Any]:
    loads: dict[str, Any] = {"before": os.getloadavg()[0]}
    t0 = time.perf_counter()
    async with single_server(tmp / "single") as where:
        single = await measure(where, tmp / "single", sizes, timeout, dag_too)
    started = time.perf_counter()
    async with three_nodes(tmp / "cluster") as where:
        cluster_start_s = time.perf_counter() - started
        cluster = await measure(where, tmp / "cluster", sizes, timeout, dag_too)
    loads["after"] = os.getloadavg()[0]
    return {
        "sizes": sizes,
        "single": single,
        "cluster": cluster,
        "cluster_start_s": round(cluster_start_s, 2),
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_average_1min": loads,
    }


def _ratio(r: dict[str, Any], phase: str, key: str) -> tuple[float, float, float]:
    c, s = float(r["cluster"][phase][key]), float(r["single"][phase][key])
    return c, s, round(c / s, 3) if s else float("nan")


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    sizes = (
        {"firings": 200, "leaves": 20, "group": 10, "events": 2_000, "inflight": 64}
        if quick
        else {"firings": 2_000, "leaves": 1_000, "group": 50, "events": 20_000, "inflight": 64}
    )
    r = asyncio.run(run(sizes, tmp, timeout=scaled(20 if quick else 120)))
    base = "one nats-server, replicas 1"
    rows: list[Figure] = []
    value, baseline, ratio = _ratio(r, "firings", "firing_rate")
    rows.append(
        figure(
            ITEM, "firings/s on a 3-node cluster, replicas 3 (claim + stored submission + events)", value,
            "firings/s", baseline=baseline, baseline_label=base, ratio=ratio, ratio_label="of single",
            note=f"{sizes['firings']:,} firings each", quick=quick,
        )
    )  # fmt: skip
    if "dag" in r["cluster"]:
        value, baseline, ratio = _ratio(r, "dag", "jobs_per_s")
        d = r["cluster"]["dag"]
        rows.append(
            figure(
                ITEM, f"DAG of {d['jobs']:,} no-op jobs, fan-out / fan-in, 2 agents, on a 3-node cluster, replicas 3",
                value, "jobs/s", baseline=baseline, baseline_label=base, ratio=ratio, ratio_label="of single",
                note=f"sink {d['sink_state']} in {d['seconds']} s (single: {r['single']['dag']['seconds']} s); "
                f"{d['fired']:,} firings for {d['triggers']:,} triggers",
                quick=quick,
            )
        )  # fmt: skip
    value, baseline, ratio = _ratio(r, "publish", "rate")
    p, ps = r["cluster"]["publish"], r["single"]["publish"]
    rows.append(
        figure(
            ITEM, f"event publish -> ack (`bus.publish`, {sizes['inflight']} in flight), 3-node cluster, replicas 3",
            value, "events/s", baseline=baseline, baseline_label=base, ratio=ratio, ratio_label="of single",
            note=f"{sizes['events']:,} events; one at a time {p['serial_rate']:,}/s vs {ps['serial_rate']:,}/s "
            f"(p50 {p['serial_latency_p50_ms']} ms vs {ps['serial_latency_p50_ms']} ms)",
            quick=quick,
        )
    )  # fmt: skip
    return rows, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firings", type=int, default=2_000)
    parser.add_argument("--leaves", type=int, default=1_000)
    parser.add_argument("--group", type=int, default=50)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--no-dag", action="store_true")
    args = parser.parse_args()
    sizes = {k: getattr(args, k) for k in ("firings", "leaves", "group", "events", "inflight")}
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(sizes, Path(tmp), dag_too=not args.no_dag)), indent=2))


if __name__ == "__main__":
    main()
