"""A 10 k-job fan-out / fan-in DAG of no-op commands on the local site vs raw asyncio spawning (target >= 0.5).

The DAG: one root; ``leaves`` jobs each triggered by the root's completion (fan-out:
one job trigger each); the leaves joined in groups of ``group`` by join triggers, each
starting one group job (fan-in); one sink joining every group job.  With the full
sizes, 1 + 9 900 + 99 + 1 = 10 001 jobs, every one of them ``true``.  The triggers are
registered (and digested by the engine) before the clock starts; the clock runs from
submitting the root to the sink's COMPLETE event.  Engine, local site and client
share one process and event loop, as in ``lwfm-bus up``.

Baseline, same run: the same 10 001 ``true`` commands spawned with
``asyncio.create_subprocess_exec`` in the same order (root, leaves, groups, sink), with
as many at once as the local site runs (its ``max_concurrent``: the number of cores).
It runs before and after the DAG; the ratio uses their mean.  The ratio is jobs per
second through lwfm-bus over jobs per second spawned raw.

    .venv/bin/python -m bench.dag [--leaves 9900] [--group 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lwfm_bus as lb
from bench._common import (
    CpuMeter,
    Figure,
    bench_bus,
    bulk_publish,
    figure,
    probed_engine,
    registration,
    scaled,
)

ITEM = "dag"
_TRUE = ("true",)


def dag_triggers(leaves: int, group: int) -> tuple[str, str, list[lb.Trigger]]:
    """Root id, sink id, and every trigger of the DAG (fan-out job triggers, group joins, the sink join)."""
    root, sink = "dag-root", "dag-sink"
    job = lb.JobDefn.of(list(_TRUE))
    out: list[lb.Trigger] = []
    leaf_ids = [f"dag-leaf-{i}" for i in range(leaves)]
    for leaf in leaf_ids:
        out.append(
            lb.JobTrigger(
                trigger_id=f"t-{leaf}", upstream=lb.Upstream(job_id=root),
                downstream=lb.Downstream(job=job, job_id=leaf),
            )
        )  # fmt: skip
    group_ids = []
    for g, start in enumerate(range(0, leaves, group)):
        gid = f"dag-group-{g}"
        group_ids.append(gid)
        out.append(
            lb.JoinTrigger(
                trigger_id=f"t-{gid}", upstreams=tuple(lb.Upstream(job_id=j) for j in leaf_ids[start : start + group]),
                downstream=lb.Downstream(job=job, job_id=gid),
            )
        )  # fmt: skip
    out.append(
        lb.JoinTrigger(
            trigger_id="t-sink", upstreams=tuple(lb.Upstream(job_id=g) for g in group_ids),
            downstream=lb.Downstream(job=job, job_id=sink),
        )
    )  # fmt: skip
    return root, sink, out


async def raw_spawn(leaves: int, group: int, concurrency: int) -> tuple[float, float]:
    """Seconds to spawn and reap the same commands in the DAG's order, ``concurrency`` at once,
    and the CPU seconds the children used."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                *_TRUE, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await proc.wait() != 0:
                raise RuntimeError("true failed")

    def stage(n: int) -> Iterator[Any]:
        return (one() for _ in range(n))

    meter = CpuMeter(None)
    meter.start()
    await one()
    await asyncio.gather(*stage(leaves))
    await asyncio.gather(*stage(-(-leaves // group)))
    await one()
    cpu = meter.stop()
    return cpu["wall_s"], cpu["reaped_children_cpu_s"]


async def run(leaves: int, group: int, tmp: Path, timeout: float = 180.0) -> dict[str, Any]:
    concurrency = os.cpu_count() or 1  # the local site's default max_concurrent
    jobs = 1 + leaves + -(-leaves // group) + 1
    raw_before, raw_children_cpu = await raw_spawn(leaves, group, concurrency)
    async with bench_bus(tmp) as (server, bus):
        root, sink, triggers = dag_triggers(leaves, group)
        await bulk_publish(bus, (registration(t) for t in triggers))
        # The window is the DAG's own clock (below), not the probe's: it measures no message.
        async with probed_engine(bus, measured=lambda _msg: False, fast_registration=True, server_pid=server.pid) as (
            engine,
            probe,
        ):
            await probe.wait_for(lambda: probe.done >= len(triggers), timeout)
            await bus.site("local")  # opened (as `up` does) before the clock starts
            t0 = time.perf_counter()
            probe.cpu.start()
            probe.profile.start()
            await bus.submit(lb.JobDefn.of(list(_TRUE)), job_id=root)
            status = await bus.wait(sink, timeout=timeout)
            elapsed = time.perf_counter() - t0
            cpu = probe.close_window("dag")
            stats = engine.stats
    raw_after, _ = await raw_spawn(leaves, group, concurrency)
    raw = (raw_before + raw_after) / 2
    return {
        "jobs": jobs,
        "leaves": leaves,
        "group": group,
        "concurrency": concurrency,
        "sink_state": status.state.value,
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(jobs / elapsed, 1),
        "raw_seconds_before": round(raw_before, 2),
        "raw_seconds_after": round(raw_after, 2),
        "raw_jobs_per_s": round(jobs / raw, 1),
        "ratio": round(raw / elapsed, 3),
        "triggers": len(triggers),
        "fired": stats.fired,
        "fired_more_than_once": stats.fired - len(triggers),
        "dispatch_calls": stats.dispatch_calls,
        "events_judged": probe.done,
        "engine_errors": stats.errors,
        "window_cpu": cpu,
        "job_processes_cpu_ms_per_job": round(1000 * cpu["reaped_children_cpu_s"] / jobs, 2),
        "raw_processes_cpu_ms_per_job": round(1000 * raw_children_cpu / jobs, 2),
        "bench_process_cpu_ms_per_job": round(1000 * cpu["bench_process_cpu_s"] / jobs, 2),
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    leaves, group = (100, 20) if quick else (9_900, 100)
    r = asyncio.run(run(leaves, group, tmp, timeout=scaled(20 if quick else 180)))
    fig = figure(
        ITEM, f"DAG of {r['jobs']:,} no-op jobs, fan-out / fan-in, local site", r["jobs_per_s"], "jobs/s",
        target=("ratio", ">=", 0.5), baseline=r["raw_jobs_per_s"],
        baseline_label=f"raw asyncio spawning of the same commands, {r['concurrency']} at once",
        ratio=r["ratio"], ratio_label="of raw", quick=quick,
        note=f"{r['seconds']} s, sink {r['sink_state']}; {r['fired_more_than_once']} firings dispatched twice "
        "(the root's event outlived the ack wait and was redelivered)" if r["fired_more_than_once"] else
        f"{r['seconds']} s, sink {r['sink_state']}",
    )  # fmt: skip
    return [fig], r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=9_900)
    parser.add_argument("--group", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args.leaves, args.group, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
