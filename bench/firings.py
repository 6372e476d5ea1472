"""Firings per second (claim + submit to a no-op site) vs the raw JetStream KV create rate (target >= 0.5).

A firing, as the engine does it: judge the upstream's COMPLETE event, claim the
firing by creating its key in ``lwfm_firings`` (``kv.create``), publish the
downstream's READY event, call the site's submit, publish ``trigger.fired``, settle the
claim (``kv.update``), ack; and, as in steady operation, judge the READY and ``fired``
events that come back through its consumer (the latter re-reads the claim).  The site
is :class:`bench._common.NoopSite`, put into this bus's site map only, so what is
timed is the engine's own work.

Setup: N job triggers (one upstream each) are registered and digested by an engine,
which is then stopped; the N upstream COMPLETE events are published; a fresh engine
replica starts and is timed from the start of its first upstream event to the end
of the last of the 3 N events it judges.

Baseline, same server and run: ``kv.create`` of N new keys in a bucket configured as
``lwfm_firings``, with as many in flight as the engine's ``max_inflight`` (256): the
cheapest durable claim the server can make.  One at a time is also measured (details).

    .venv/bin/python -m bench.firings [--firings 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nats.js.api

import lwfm_bus as lb
from bench._common import (
    Figure,
    NoopSite,
    add_noop_site,
    bench_bus,
    bulk_publish,
    figure,
    probed_engine,
    registration,
    scaled,
)

ITEM = "firings"
_DOWN = lb.Downstream(job=lb.JobDefn.of(["true"]), site="noop")


async def kv_create_rate(bus: lb.Bus, count: int, inflight: int) -> float:
    """Keys created per second in a fresh bucket like ``lwfm_firings`` (file storage, history 1)."""
    kv = await bus.jetstream.create_key_value(
        nats.js.api.KeyValueConfig(bucket=f"bench_kv_{inflight}", history=1, storage=nats.js.api.StorageType.FILE)
    )
    value = b'{"firing_key":"x","trigger_id":"t","outcome":"fire","state":"claimed"}' + b" " * 160  # ~ a record
    keys = iter(range(count))

    async def worker() -> None:
        for i in keys:
            await kv.create(f"f.{i:08d}", value)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return count / (time.perf_counter() - t0)


async def run(firings: int, tmp: Path, timeout: float = 60.0) -> dict[str, Any]:
    async with bench_bus(tmp) as (server, bus):
        add_noop_site(bus)
        engine_cfg = lb.EngineConfig()
        kv_parallel = await kv_create_rate(bus, firings, engine_cfg.max_inflight)
        kv_serial = await kv_create_rate(bus, max(100, firings // 4), 1)
        triggers = [
            lb.JobTrigger(trigger_id=f"t{i}", upstream=lb.Upstream(job_id=f"up{i}"), downstream=_DOWN)
            for i in range(firings)
        ]
        await bulk_publish(bus, (registration(t) for t in triggers))
        async with probed_engine(bus, engine_cfg, measured=lambda _msg: False, fast_registration=True) as (
            engine,
            probe,
        ):
            await probe.wait_for(lambda: probe.done >= firings, timeout)
            assert len(engine.index) == firings
        await bulk_publish(
            bus,
            (
                lb.make_event(lb.JobStatus(job_id=f"up{i}", site="local", state=lb.JobState.COMPLETE), source="/bench")
                for i in range(firings)
            ),
        )
        NoopSite.submitted = 0
        async with probed_engine(bus, engine_cfg, server_pid=server.pid) as (engine, probe):
            await probe.wait_for(lambda: probe.done >= 3 * firings and engine.stats.fired >= firings, timeout)
            cpu = probe.close_window("firings")
            stats = engine.stats
    rate = firings / (probe.last_end - (probe.first_start or probe.last_end))
    return {
        "firings": firings,
        "fired": stats.fired,
        "submitted_to_noop_site": NoopSite.submitted,
        "duplicates_skipped": stats.duplicates_skipped,
        "errors": stats.errors,
        "events_judged": probe.done,
        "firing_rate": round(rate),
        "kv_create_rate_parallel": round(kv_parallel),
        "kv_create_rate_serial": round(kv_serial),
        "kv_inflight": engine_cfg.max_inflight,
        "ratio": round(rate / kv_parallel, 3),
        "window_cpu": cpu,
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    n = 300 if quick else 3_000
    r = asyncio.run(run(n, tmp, timeout=scaled(15 if quick else 60)))
    fig = figure(
        ITEM, "firings/s, claim + submit to a no-op site", r["firing_rate"], "firings/s",
        target=("ratio", ">=", 0.5), baseline=r["kv_create_rate_parallel"], baseline_unit="creates/s",
        baseline_label=f"raw KV creates, {r['kv_inflight']} in flight "
        f"(one at a time: {r['kv_create_rate_serial']:,}/s)",
        ratio=r["ratio"], ratio_label="of raw", note=f"{n:,} firings; {r['events_judged']:,} events judged",
        quick=quick,
    )  # fmt: skip
    return [fig], r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firings", type=int, default=3_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args.firings, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
