"""Trigger latency: upstream event published -> downstream submit called (issue 4, item 7).

Starts its own nats-server (the embedded binary) on a free loopback port, one engine
replica in this process, and registers one job trigger per sample.  Each sample
publishes the upstream's COMPLETE event and waits until the engine calls the site to
submit the downstream job (an engine hook records that instant).  Samples are taken one
at a time: the next starts only once the previous downstream job has finished and its
``fired`` event is out, so each one sees an idle bus.  ``--overlap`` starts each sample
as soon as the previous submit was called, while that job is still starting and running.

    .venv/bin/python bench/latency.py [--samples 300] [--overlap] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus.testing import bus_config_for, start_test_server


async def run(samples: int, overlap: bool = False) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        async with start_test_server(Path(tmp) / "nats") as server:
            config = bus_config_for(server, Path(tmp) / "home")
            async with lb.connect(config) as bus, lb.serve_engine(bus) as engine:
                arrived: dict[str, float] = {}
                waiters: dict[str, asyncio.Future[None]] = {}

                async def hook(job_id: str) -> None:
                    arrived[job_id] = time.perf_counter()
                    fut = waiters.get(job_id)
                    if fut is not None and not fut.done():
                        fut.set_result(None)

                engine._dispatch_hooks.append(hook)
                pairs = [(lb.new_id(), lb.new_id()) for _ in range(samples + 20)]
                for up, down in pairs:
                    await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down)
                lat = []
                loop = asyncio.get_running_loop()
                fired: dict[str, asyncio.Future[None]] = {}

                events = bus.subscribe("lwfm.*.trigger.*.*.fired")
                await events.open()

                async def watch_fired() -> None:
                    async for ev in events:
                        if isinstance(ev, lb.TriggerFiredEvent) and ev.data.downstream_job_id in fired:
                            fut = fired[ev.data.downstream_job_id]
                            if not fut.done():
                                fut.set_result(None)

                watcher = asyncio.create_task(watch_fired())
                for i, (up, down) in enumerate(pairs):
                    waiters[down] = loop.create_future()
                    fired[down] = loop.create_future()
                    event = lb.make_event(
                        lb.JobStatus(job_id=up, site="local", state=lb.JobState.COMPLETE), source="/bench"
                    )
                    t0 = time.perf_counter()
                    await bus.publish(event)
                    await asyncio.wait_for(waiters[down], 30)
                    if i >= 20:  # warm-up
                        lat.append((arrived[down] - t0) * 1000)
                    if not overlap:
                        # Let this sample's aftermath (the fired event, the job's own run and
                        # its events) finish before the next one, so each sample sees an idle bus.
                        await asyncio.wait_for(asyncio.gather(fired[down], bus.wait(down)), 30)
                watcher.cancel()
                await events.close()
    lat.sort()
    return {
        "mode": "overlap" if overlap else "idle",
        "samples": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="start each sample as soon as the previous submit was called, while that job still runs",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.samples, args.overlap))
    print(
        f"trigger latency, {result['mode']}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms "
        f"({result['samples']} samples; targets p50 <= 5 ms, p99 <= 25 ms)"
    )
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "latency", **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
