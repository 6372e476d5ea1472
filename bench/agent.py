"""Submit -> job started, through a site agent in a process of its own (target p50 <= 5 ms).

What a user sees when an agent (``lwfm-bus agent --site local``, started here as its
own process, as a user would) serves the ``local`` site and a client submits: this
benchmark's process is a pure client (``agents=()``; no engine, it reaches the server
as an external deployment).

One sample: ``t0`` just before ``await bus.submit(...)`` is called; ``t1`` when the
job's own process has started, i.e. when this process reads the byte the job writes
to a FIFO as its first act (the job is ``sh -c 'printf x > FIFO'``).  So the figure
covers storing the submission and the READY / PENDING events (``submit`` returns
meanwhile), the server pushing the submission to the agent, the agent's checks and
its local site starting the job (its ``sh`` wrapper, then the command).  Samples are
taken one at a time: the next starts only once the previous job's COMPLETE event is
out (received by a plain subscription), so each sees an idle agent.

Baseline, same run, measured the same way and interleaved with the samples (one
raw start, then one through the agent): the same command spawned with
``asyncio.create_subprocess_exec`` by this process, from the call to the byte read.

Details also give, per sample, when ``submit`` returned and when the job's RUNNING
event reached this process (a core subscription), to tell where the time goes.

    .venv/bin/python -m bench.agent [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

import lwfm_bus as lb
from bench._common import (
    Figure,
    StartSignals,
    WindowProfile,
    agent_process,
    figure,
    log,
    percentile,
    scaled,
)
from lwfm_bus.testing import bus_config_for, start_test_server

ITEM = "agent"
_WARMUP = 5


class _JobEvents:
    """The instant each job's RUNNING and terminal events reach this process (a core subscription)."""

    def __init__(self) -> None:
        self.running: dict[str, float] = {}
        self.ended: dict[str, asyncio.Future[str]] = {}

    async def on_msg(self, msg: Msg) -> None:
        now = time.perf_counter()
        parts = msg.subject.split(".")  # lwfm.<site>.job.<workflow>.<job>.<STATE>
        if len(parts) != 6:
            return
        job = parts[4]
        try:
            state = lb.JobState(parts[5])
        except ValueError:
            return
        if state is lb.JobState.RUNNING:
            self.running.setdefault(job, now)
        elif state.is_terminal:
            fut = self.ended.get(job)
            if fut is not None and not fut.done():
                fut.set_result(state.value)


async def _raw_start(signals: StartSignals, timeout: float) -> float:
    """Milliseconds from ``create_subprocess_exec`` called to the job's byte read; then reaps it."""
    started = signals.arm()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *signals.command(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    t1 = await asyncio.wait_for(started, timeout)
    if await asyncio.wait_for(proc.wait(), timeout) != 0:
        raise RuntimeError("the raw job failed")
    return (t1 - t0) * 1000


async def run(samples: int, tmp: Path, timeout: float = 30.0) -> dict[str, Any]:
    async with start_test_server(tmp / "nats") as server:
        config = bus_config_for(server, tmp / "client-home", agents=())
        async with (
            agent_process(server.url, tmp / "agent-home", timeout=timeout) as agent,
            lb.connect(config, name="bench-agent-client") as bus,
        ):
            log(f"agent process {agent.pid} serves site local")
            events = _JobEvents()
            sub = await bus.nats.subscribe("lwfm.local.job.>", cb=events.on_msg)
            profile = WindowProfile()
            agent_profile = WindowProfile(pid=agent.pid)
            raw: list[float] = []
            started: list[float] = []
            returned: list[float] = []
            running: list[float] = []
            try:
                with StartSignals(tmp / "started.fifo") as signals:
                    defn = lb.JobDefn.of(list(signals.command()))
                    for i in range(samples + _WARMUP):
                        if i == _WARMUP:
                            profile.start()
                            agent_profile.start()
                        raw_ms = await _raw_start(signals, timeout)
                        job_id = f"agent-sample-{i}"
                        ended = events.ended[job_id] = asyncio.get_running_loop().create_future()
                        begun = signals.arm()
                        t0 = time.perf_counter()
                        await bus.submit(defn, job_id=job_id)
                        t_ret = time.perf_counter()
                        t1 = await asyncio.wait_for(begun, timeout)
                        state = await asyncio.wait_for(ended, timeout)
                        if state != lb.JobState.COMPLETE.value:
                            raise RuntimeError(f"job {job_id} ended {state}; agent said:\n{agent.tail()}")
                        if i >= _WARMUP:
                            raw.append(raw_ms)
                            started.append((t1 - t0) * 1000)
                            returned.append((t_ret - t0) * 1000)
                            running.append((events.running.get(job_id, float("nan")) - t0) * 1000)
                    profile.stop("agent-client")
                    agent_profile.stop("agent-process")
                    stray = signals.stray
            finally:
                profile.discard()
                agent_profile.discard()
                await sub.unsubscribe()

    def q(values: list[float], p: float) -> float:
        return round(percentile(values, p), 2)

    seen_running = [r for r in running if not math.isnan(r)]
    return {
        "samples": len(started),
        "p50_ms": round(statistics.median(started), 2),
        "p99_ms": q(started, 99),
        "max_ms": round(max(started), 2),
        "raw_p50_ms": round(statistics.median(raw), 2),
        "raw_p99_ms": q(raw, 99),
        "submit_returned_p50_ms": round(statistics.median(returned), 2),
        "submit_returned_p99_ms": q(returned, 99),
        "running_event_p50_ms": round(statistics.median(seen_running), 2) if seen_running else None,
        "running_event_p99_ms": q(seen_running, 99) if seen_running else None,
        "stray_start_signals": stray,
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    n = 30 if quick else 300
    r = asyncio.run(run(n, tmp, timeout=scaled(30)))
    note = (
        f"{r['samples']} samples; submit returned p50 {r['submit_returned_p50_ms']} ms, "
        f"RUNNING event received p50 {r['running_event_p50_ms']} ms"
    )
    base = "raw create_subprocess_exec of the same command, call -> started"
    figs = []
    for q in ("p50", "p99"):
        value, raw = r[f"{q}_ms"], r[f"raw_{q}_ms"]
        figs.append(
            figure(
                ITEM, f"submit -> job started, agent process, {q}", value, "ms",
                target=("value", "<=", 5.0) if q == "p50" else None, baseline=raw, baseline_label=base,
                ratio=round(value / raw, 2) if raw else None, ratio_label="of raw", note=note, quick=quick,
            )
        )  # fmt: skip
    return figs, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(run(args.samples, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
