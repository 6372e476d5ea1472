"""A 10 k-job fan-out / fan-in DAG of no-op commands on the local site, run by two agents,
vs raw asyncio spawning (target >= 0.25 of raw).

The DAG: one root; ``leaves`` jobs each triggered by the root's completion (fan-out:
one job trigger each); the leaves joined in groups of ``group`` by join triggers, each
starting one group job (fan-in); one sink joining every group job.  With the full
sizes, 1 + 9 900 + 99 + 1 = 10 001 jobs, every one of them ``true``.  The triggers are
registered (and digested by the engine) before the clock starts; the clock runs from
submitting the root to the sink's COMPLETE event.

Two agents serve the local site: the one in this process (beside the engine and the
client, as in ``lwfm-bus up``) and one ``lwfm-bus agent --site local`` process, as a
user adds one.  Why this pair rather than two agent processes and a pure client: it
is the deployment a user of one machine gets (``up`` plus an agent), and on two
cores a third Python process only adds contention: measured side by side (2 000
leaves, a loaded machine), two agent processes and a client did no better (0.048x
and 0.067x of raw against 0.063x and 0.099x).  ``--no-in-process-agent
--agent-processes 2`` runs that variant.  Both read one sites file,
``[sites.local] max_concurrent = <cores>``, so the site's concurrency -- the agents'
shared consumer's ``max_ack_pending``, the limit across both -- is the number of cores,
as many as the baseline spawns at once.  A few warm-up jobs before the clock open
both agents' sites and the engine's "is an agent there?" answer.

Baseline, same run: the same 10 001 ``true`` commands spawned with
``asyncio.create_subprocess_exec`` in the same order (root, leaves, groups, sink), with
``max_concurrent`` of them at once.  It runs before and after the DAG; the ratio uses
their mean.  The ratio is jobs per second through lwfm-bus over jobs per second
spawned raw.  Details tell how many jobs each agent process ran, and the CPU each
process used over the window.

    .venv/bin/python -m bench.dag [--leaves 9900] [--group 100] [--no-in-process-agent] [--agent-processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lwfm_bus as lb
from bench._common import (
    CpuMeter,
    Figure,
    WindowProfile,
    agent_process,
    bench_bus,
    bulk_publish,
    cpu_seconds,
    figure,
    log,
    probed_engine,
    reaped_children_cpu_seconds,
    registration,
    scaled,
    write_sites_file,
)
from lwfm_bus._bus._eventbus import SUBMIT_STREAM

ITEM = "dag"
_TRUE = ("true",)
_WARM_UP = "dag-warm-up-"


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


def jobs_per_process(jobs_dir: Path, prefix: str = "dag-") -> dict[str, int]:
    """How many of the DAG's jobs each process launched (the job's ``owner`` file: ``<pid>-<uuid>``)."""
    counts: Counter[str] = Counter()
    for owner in jobs_dir.glob(f"{prefix}*/owner"):
        if not owner.parent.name.startswith(_WARM_UP):
            counts[owner.read_text().split("-", 1)[0]] += 1
    return dict(counts)


async def warm_up(bus: lb.Bus, count: int, timeout: float) -> None:
    """``count`` jobs at once, to their ends: both agents have opened the site, the submitter knows they are there."""
    ids = [f"{_WARM_UP}{i}" for i in range(count)]
    await asyncio.gather(*(bus.submit(lb.JobDefn.of(list(_TRUE)), job_id=i) for i in ids))
    states = await asyncio.gather(*(bus.wait(i, timeout=timeout) for i in ids))
    if any(s.state is not lb.JobState.COMPLETE for s in states):
        raise RuntimeError(f"a warm-up job did not complete: {[s.state.value for s in states]}")


async def run(
    leaves: int,
    group: int,
    tmp: Path,
    timeout: float = 180.0,
    *,
    in_process_agent: bool = True,
    agent_processes: int = 1,
) -> dict[str, Any]:
    concurrency = os.cpu_count() or 1  # the local site's default max_concurrent, set explicitly below
    sites = write_sites_file(tmp / "sites.toml", concurrency)
    jobs = 1 + leaves + -(-leaves // group) + 1
    raw_before, raw_children_cpu = await raw_spawn(leaves, group, concurrency)
    async with contextlib.AsyncExitStack() as stack:
        server, bus = await stack.enter_async_context(
            bench_bus(tmp, sites_file=sites, agents=("local",) if in_process_agent else ())
        )
        agents = [
            await stack.enter_async_context(agent_process(server.url, tmp / "home", sites_file=sites, timeout=timeout))
            for _ in range(agent_processes)
        ]
        consumer = await bus.jetstream.consumer_info(SUBMIT_STREAM, "lwfm-agent-local")
        max_ack_pending = consumer.config.max_ack_pending
        if max_ack_pending != concurrency:
            raise RuntimeError(f"the agents' consumer runs {max_ack_pending} jobs at once, not {concurrency}")
        await warm_up(bus, 4 * concurrency, timeout)
        log(f"agents ready: in this process {in_process_agent}, processes {[a.pid for a in agents]}")
        root, sink, triggers = dag_triggers(leaves, group)
        await bulk_publish(bus, (registration(t) for t in triggers))
        # The window is the DAG's own clock (below), not the probe's: it measures no message.
        async with probed_engine(bus, measured=lambda _s: False, fast_registration=True, server_pid=server.pid) as (
            engine,
            probe,
        ):
            await probe.wait_for(lambda: probe.done >= len(triggers), timeout)
            profiles = [WindowProfile(pid=a.pid) for a in agents]
            t0 = time.perf_counter()
            agents_cpu0 = sum(cpu_seconds(a.pid) for a in agents)
            agents_jobs_cpu0 = sum(reaped_children_cpu_seconds(a.pid) for a in agents)
            probe.cpu.start()
            probe.profile.start()
            for prof in profiles:
                prof.start()
            try:
                await bus.submit(lb.JobDefn.of(list(_TRUE)), job_id=root)
                status = await bus.wait(sink, timeout=timeout)
                elapsed = time.perf_counter() - t0
                cpu = probe.close_window("dag")
                for n, prof in enumerate(profiles):
                    prof.stop(f"dag-agent-process-{n + 1}")
            finally:
                for prof in profiles:
                    prof.discard()
            cpu["agent_processes_cpu_s"] = round(sum(cpu_seconds(a.pid) for a in agents) - agents_cpu0, 2)
            cpu["agent_processes_jobs_cpu_s"] = round(
                sum(reaped_children_cpu_seconds(a.pid) for a in agents) - agents_jobs_cpu0, 2
            )
            stats = engine.stats
        per_process = jobs_per_process(tmp / "home" / "sites" / "local" / "jobs")
    raw_after, _ = await raw_spawn(leaves, group, concurrency)
    raw = (raw_before + raw_after) / 2
    here = str(os.getpid())
    return {
        "jobs": jobs,
        "leaves": leaves,
        "group": group,
        "concurrency": concurrency,
        "agents_max_ack_pending": max_ack_pending,
        "jobs_run_by_this_process": per_process.get(here, 0),
        "jobs_run_by_agent_processes": [per_process.get(str(a.pid), 0) for a in agents],
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
        "job_processes_cpu_ms_per_job": round(
            1000 * (cpu["reaped_children_cpu_s"] + cpu["agent_processes_jobs_cpu_s"]) / jobs, 2
        ),
        "raw_processes_cpu_ms_per_job": round(1000 * raw_children_cpu / jobs, 2),
        "bench_process_cpu_ms_per_job": round(1000 * cpu["bench_process_cpu_s"] / jobs, 2),
        "agent_processes_cpu_ms_per_job": round(1000 * cpu["agent_processes_cpu_s"] / jobs, 2),
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    leaves, group = (100, 20) if quick else (9_900, 100)
    # Through agents the full DAG runs at ~40-110 jobs/s on two cores (loaded or not): 90-250 s, plus raw spawning.
    r = asyncio.run(run(leaves, group, tmp, timeout=scaled(20 if quick else 300)))
    fig = figure(
        ITEM, f"DAG of {r['jobs']:,} no-op jobs, fan-out / fan-in, local site, 2 agents", r["jobs_per_s"],
        "jobs/s", target=("ratio", ">=", 0.25), baseline=r["raw_jobs_per_s"],
        baseline_label=f"raw asyncio spawning of the same commands, {r['concurrency']} at once",
        ratio=r["ratio"], ratio_label="of raw", quick=quick,
        note=f"{r['seconds']} s, sink {r['sink_state']}; jobs run by this process / the agent process: "
        f"{r['jobs_run_by_this_process']:,} / {', '.join(f'{n:,}' for n in r['jobs_run_by_agent_processes'])}"
        + (f"; {r['fired_more_than_once']} firings dispatched twice (an event outlived the ack wait and was "
           "redelivered)" if r["fired_more_than_once"] else ""),
    )  # fmt: skip
    return [fig], r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=9_900)
    parser.add_argument("--group", type=int, default=100)
    parser.add_argument("--agent-processes", type=int, default=1, help="`lwfm-bus agent` processes (default 1)")
    parser.add_argument("--no-in-process-agent", action="store_true", help="this process runs no agent")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            args.leaves, args.group, Path(tmp), in_process_agent=not args.no_in_process_agent,
            agent_processes=args.agent_processes,
        )  # fmt: skip
        print(json.dumps(asyncio.run(result), indent=2))


if __name__ == "__main__":
    main()
