"""Trigger latency: upstream event published -> downstream job dispatched (issues 4 and 9).

Starts its own nats-server (the embedded binary) on a free loopback port, one engine
replica in this process, and registers one job trigger per sample.  Each sample
publishes the upstream's COMPLETE event and times two instants:

* **dispatched** -- the downstream job's submission is stored for its site (the engine
  has claimed the firing and handed the job over; a plain subscription on the
  submission subject sees it);
* **at the site** -- the site's agent took the submission and called the site's submit.

The site is the no-op site of ``lwfm_bus.testing`` (served by a real agent in this
process), which records that instant and completes the job at once.  Samples are taken one
at a time: the next starts only once the previous downstream job has finished and its
``fired`` event is out, so each one sees an idle bus.  ``--overlap`` starts each sample
as soon as the previous job reached its site, while its reports are still flowing.
``--background RATE`` runs a separate process publishing unrelated job events at RATE
per second throughout (the engine ingests every one of them while samples are taken).

Baseline, same run and same conditions: the raw JetStream hop, an event published
(and acknowledged) to the same stream and received by a plain push consumer in this
process -- the floor under any trigger latency.

    .venv/bin/python bench/latency.py [--samples 300] [--overlap] [--background 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

import lwfm_bus as lb
from lwfm_bus._bus._eventbus import STREAM
from lwfm_bus._subjects import SUBMIT_ROOT
from lwfm_bus.testing import bus_config_for, serve_noop_site, start_test_server

if TYPE_CHECKING:
    from bench._common import Figure

ITEM = "latency"
_WARMUP = 20
_SITE = "noop"  # served in this process by the no-op site of lwfm_bus.testing


def _p(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed sample, as the README's earlier figures."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@contextlib.asynccontextmanager
async def background(url: str, rate: float, home: Path) -> AsyncIterator[dict[str, Any]]:
    """A paced publisher in its own process for the block's duration; yields its summary (filled at exit)."""
    summary: dict[str, Any] = {}
    script = Path(__file__).with_name("_background.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--url", url, "--rate", str(rate), "--seconds", "600", "--home", str(home),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        if line.strip() != b"started":
            raise RuntimeError(f"background publisher did not start: {line!r}")
        yield summary
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(20):
                out = await proc.stdout.read()
                await proc.wait()
            with contextlib.suppress(ValueError):
                summary.update(json.loads(out.decode().strip().splitlines()[-1]))
        except (TimeoutError, IndexError):
            proc.kill()
            await proc.wait()


async def raw_hop(bus: lb.Bus, samples: int) -> list[float]:
    """Milliseconds from ``bus.publish`` called to the event received by a push consumer.

    Workflow events: the stream keeps them but the engine does not consume them, so
    this measures the server and client alone, beside an engine doing whatever it does.
    """
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[float]] = {}

    async def received(msg: Msg) -> None:
        fut = waiting.get((msg.headers or {}).get("Nats-Msg-Id", ""))
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    sub = await bus.jetstream.subscribe("lwfm.*.workflow.>", stream=STREAM, cb=received, ordered_consumer=True)
    lat = []
    try:
        for i in range(samples + _WARMUP):
            event = lb.make_event(lb.WorkflowDefined(workflow_id=lb.new_id(), site="local"), source="/bench")
            waiting[event.id] = loop.create_future()
            t0 = time.perf_counter()
            await bus.publish(event)
            got = await asyncio.wait_for(waiting[event.id], 30)
            del waiting[event.id]
            if i >= _WARMUP:
                lat.append((got - t0) * 1000)
    finally:
        await sub.unsubscribe()
    return lat


async def run(
    samples: int,
    overlap: bool = False,
    background_rate: float = 0.0,
    baseline_samples: int = 0,
    tmp: Path | None = None,
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        root = tmp or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        async with start_test_server(root / "nats") as server:
            config = bus_config_for(server, root / "home", agents=())
            async with contextlib.AsyncExitStack() as astack:
                bus = await astack.enter_async_context(lb.connect(config))
                await astack.enter_async_context(lb.serve_engine(bus))
                load: dict[str, Any] = {}
                if background_rate > 0:
                    load = await astack.enter_async_context(background(server.url, background_rate, root / "bg"))
                    await asyncio.sleep(1.0)  # let the engine reach its steady ingest of the load
                base = await raw_hop(bus, baseline_samples) if baseline_samples else []
                lat, at_site = await _trigger_samples(bus, samples, overlap)
    result: dict[str, Any] = {
        "mode": ("overlap" if overlap else "idle") + (f", {background_rate:g} events/s background" if load else ""),
        "samples": len(lat),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(_p(lat, 99), 2),
        "max_ms": round(max(lat), 2),
        "at_site_p50_ms": round(statistics.median(at_site), 2),
        "at_site_p99_ms": round(_p(at_site, 99), 2),
    }
    if base:
        result.update(
            baseline_p50_ms=round(statistics.median(base), 2),
            baseline_p99_ms=round(_p(base, 99), 2),
            baseline_samples=len(base),
        )
    if load:
        result["background"] = load
    return result


async def _trigger_samples(bus: lb.Bus, samples: int, overlap: bool) -> tuple[list[float], list[float]]:
    """Per sample, milliseconds to the stored submission and to the site's submit."""
    stored: dict[str, float] = {}
    arrived: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[None]] = {}

    def submitted(job_id: str) -> None:
        arrived[job_id] = time.perf_counter()
        fut = waiters.get(job_id)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def on_stored(msg: Msg) -> None:
        stored.setdefault(msg.subject.rsplit(".", 1)[-1], time.perf_counter())

    sub = await bus.nats.subscribe(f"{SUBMIT_ROOT}.{_SITE}.>", cb=on_stored)
    try:
        async with serve_noop_site(bus, _SITE) as site:
            site.listeners.append(submitted)
            return await _timed(bus, samples, overlap, stored, arrived, waiters)
    finally:
        await sub.unsubscribe()


async def _timed(
    bus: lb.Bus,
    samples: int,
    overlap: bool,
    stored: dict[str, float],
    arrived: dict[str, float],
    waiters: dict[str, asyncio.Future[None]],
) -> tuple[list[float], list[float]]:
    pairs = [(lb.new_id(), lb.new_id()) for _ in range(samples + _WARMUP)]
    for up, down in pairs:
        await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down, site=_SITE)
    lat: list[float] = []
    at_site: list[float] = []
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
    try:
        for i, (up, down) in enumerate(pairs):
            waiters[down] = loop.create_future()
            fired[down] = loop.create_future()
            event = lb.make_event(lb.JobStatus(job_id=up, site="local", state=lb.JobState.COMPLETE), source="/bench")
            t0 = time.perf_counter()
            await bus.publish(event)
            await asyncio.wait_for(waiters[down], 30)
            if i >= _WARMUP:
                lat.append((stored[down] - t0) * 1000)
                at_site.append((arrived[down] - t0) * 1000)
            if not overlap:
                # Let this sample's aftermath (the fired event, the job's reports) finish
                # before the next one, so each sample sees an idle bus.
                await asyncio.wait_for(asyncio.gather(fired[down], bus.wait(down)), 30)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await events.close()
    return lat, at_site


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    """Idle, then under 1 k events/s of background; each beside the raw hop measured with it."""
    from bench._common import figure

    samples = 30 if quick else 300
    idle = asyncio.run(run(samples, baseline_samples=samples, tmp=tmp / "idle"))
    loaded = asyncio.run(run(samples, background_rate=1000.0, baseline_samples=samples, tmp=tmp / "loaded"))
    figs = []
    for label, r in (("idle", idle), ("1 k events/s background", loaded)):
        note = f"{r['samples']} samples; at the site (its agent called the site's submit) p50 {r['at_site_p50_ms']} ms"
        if "background" in r:
            note += f"; background achieved {r['background'].get('rate', '?')} events/s"
        for q, limit in (("p50", 5.0), ("p99", 25.0)):
            value, base = r[f"{q}_ms"], r[f"baseline_{q}_ms"]
            figs.append(
                figure(
                    ITEM, f"trigger latency (to dispatched) {q}, {label}", value, "ms", target=("value", "<=", limit),
                    baseline=base, baseline_label="raw JetStream publish -> push consumer",
                    ratio=round(value / base, 2) if base else None, ratio_label="of raw", note=note, quick=quick,
                )
            )  # fmt: skip
    return figs, {"idle": idle, "background": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="start each sample as soon as the previous job reached its site, while its reports still flow",
    )
    parser.add_argument("--background", type=float, default=0.0, metavar="RATE", help="unrelated events per second")
    parser.add_argument("--baseline", type=int, default=0, metavar="N", help="also time N raw JetStream hops")
    args = parser.parse_args()
    result = asyncio.run(run(args.samples, args.overlap, args.background, args.baseline))
    print(
        f"trigger latency (to dispatched), {result['mode']}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"max {result['max_ms']} ms "
        f"({result['samples']} samples; targets p50 <= 5 ms, p99 <= 25 ms)"
    )
    at_site = f"p50 {result['at_site_p50_ms']} ms, p99 {result['at_site_p99_ms']} ms"
    print(f"to the site's submit, through its agent: {at_site}")
    if "baseline_p50_ms" in result:
        print(f"raw JetStream hop, same run: p50 {result['baseline_p50_ms']} ms, p99 {result['baseline_p99_ms']} ms")
    if "background" in result:
        print(f"background: {result['background']}")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "latency", **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
