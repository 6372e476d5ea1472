"""Firings per second (claim + stored submission + events) vs the raw JetStream KV create rate (target >= 0.25).

A firing, as the engine does it: judge the upstream's COMPLETE event, claim the
firing by creating its key in ``lwfm_firings`` (``kv.create``), store the downstream
job's submission in ``LWFM_SUBMIT`` (create-if-absent), publish its READY and PENDING
events, publish ``trigger.fired``, settle the claim (``kv.update``), ack; and, as in
steady operation, judge the READY, PENDING and ``fired`` events that come back through
its consumer (the last re-reads the claim).

Where the firings go: site ``noop``, served by an agent that only answers pings
(:func:`bench._common.ping_only_agent`) and takes no submission.  So the engine takes
exactly the path of a served site (the "is an agent there?" answer is yes, PENDING
"queued"), and what is timed is the engine's dispatch and the server's storing of it;
no job and no agent's consumer run on the two cores meanwhile.  A site without any
agent would time the same work under a "no agent" PENDING (and a warning), a path a
healthy deployment does not take; a real agent with a do-nothing adapter would add
an agent's own per-job round trips, which ``bench.dag`` and ``bench.agent`` measure.
This process runs no agent at all (``agents=()``).

Setup: N job triggers (one upstream each) are registered and digested by an engine,
which is then stopped; the N upstream COMPLETE events are published; a fresh engine
replica starts and is timed from the start of its first upstream event to the end
of the last of the 4 N events it judges.

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
    bench_bus,
    bulk_publish,
    figure,
    ping_only_agent,
    probed_engine,
    registration,
    scaled,
)
from lwfm_bus._bus._eventbus import STREAM, SUBMIT_STREAM

ITEM = "firings"
_SITE = "noop"
_DOWN = lb.Downstream(job=lb.JobDefn.of(["true"]), site=_SITE)
_EVENTS_PER_FIRING = 4  # the upstream's COMPLETE, then READY, PENDING and trigger.fired come back


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
    async with bench_bus(tmp, agents=()) as (server, bus), ping_only_agent(bus, _SITE):
        engine_cfg = lb.EngineConfig()
        kv_parallel = await kv_create_rate(bus, firings, engine_cfg.max_inflight)
        kv_serial = await kv_create_rate(bus, max(100, firings // 4), 1)
        triggers = [
            lb.JobTrigger(trigger_id=f"t{i}", upstream=lb.Upstream(job_id=f"up{i}"), downstream=_DOWN)
            for i in range(firings)
        ]
        await bulk_publish(bus, (registration(t) for t in triggers))
        async with probed_engine(bus, engine_cfg, measured=lambda _subject: False, fast_registration=True) as (
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
        async with probed_engine(bus, engine_cfg, server_pid=server.pid) as (engine, probe):
            await probe.wait_for(
                lambda: probe.done >= _EVENTS_PER_FIRING * firings and engine.stats.fired >= firings, timeout
            )
            cpu = probe.close_window("firings")
            stats = engine.stats
        stored = (await bus.jetstream.stream_info(SUBMIT_STREAM)).state.messages
        # One downstream's PENDING, to show which path the dispatch took ("queued": an agent answered).
        fired = await bus.jetstream.get_msg(STREAM, subject=f"lwfm.*.trigger.*.{triggers[0].trigger_id}.fired")
        down = lb.decode_event(fired.data or b"", bus.config.max_event_bytes)
        assert isinstance(down, lb.TriggerFiredEvent) and down.data.downstream_job_id
        pending_msg = await bus.jetstream.get_msg(
            STREAM, subject=f"lwfm.{_SITE}.job.*.{down.data.downstream_job_id}.PENDING"
        )
        pending = lb.decode_event(pending_msg.data or b"", bus.config.max_event_bytes)
        pending_state = pending.data.native_state if isinstance(pending, lb.JobStatusEvent) else None
    rate = firings / (probe.last_end - (probe.first_start or probe.last_end))
    return {
        "firings": firings,
        "fired": stats.fired,
        "submissions_stored": stored,
        "downstream_pending_native_state": pending_state,
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
        ITEM, "firings/s, claim + stored submission + events, site with a ping-only agent", r["firing_rate"],
        "firings/s", target=("ratio", ">=", 0.25), baseline=r["kv_create_rate_parallel"], baseline_unit="creates/s",
        baseline_label=f"raw KV creates, {r['kv_inflight']} in flight "
        f"(one at a time: {r['kv_create_rate_serial']:,}/s)",
        ratio=r["ratio"], ratio_label="of raw", note=f"{n:,} firings; {r['events_judged']:,} events judged; "
        f"{r['submissions_stored']:,} submissions stored",
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
