"""Engine ingest with 100 k registered triggers vs a raw nats-py JetStream push consumer (target >= 0.6).

Both consume the same events from the same stream of the same server, in this process:

* the **raw baseline** -- a durable push consumer (manual acks, 1024 unacked at most,
  as the engine's) that acks each message and does nothing else;
* the **engine** -- one replica whose index holds the registered triggers; per event
  it decodes and validates, passes the ordering barrier, looks the event up in the
  index, checks each candidate, and acks.

The events are published before either consumer starts, so neither is limited by a
publisher sharing its CPU.  Half are ``RUNNING`` events of jobs that a trigger waits
for (a candidate is found; RUNNING does not satisfy it), half data arrivals whose
``sample`` names a data trigger but whose ``step`` fails its range: every event is
judged, none fires (firing is the firings benchmark).  The trigger mix is the
matching benchmark's.  The engine's window runs from the start of its first such
event to the end of its last; it also reads the registrations first (their
history look-back skipped: see ``skip_history_lookup``), which is not timed.

The baseline runs before and after the engine and their mean is the ratio's
denominator, so a noisy neighbour that comes or goes is partly averaged out.  It
reads with one filter (``lwfm.>``), as the engine's work consumer now does; the same
consumer with the seven filters the engine used to have is also timed (for five
seconds), because nats-server delivers to a consumer with several filter subjects over
a stream of many distinct subjects dozens of times more slowly than to one with a
single filter (nats-server issues 4888 and 5040).

    .venv/bin/python -m bench.ingest [--triggers 100000] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.js.api

import lwfm_bus as lb
from bench._common import (
    Figure,
    bench_bus,
    bulk_publish,
    figure,
    is_trigger_event,
    log,
    mixed_trigger,
    probed_engine,
    registration,
    scaled,
)
from lwfm_bus._bus._eventbus import STREAM
from lwfm_bus._engine import _replica as _engine

ITEM = "ingest"
ALL = "lwfm.>"
# The seven filters the engine's work consumer had before it took the whole stream
# through one (kept here for the comparison of raw consumers).
MULTI_FILTERS = [
    "lwfm.*.job.>",
    "lwfm.*.data.>",
    "lwfm.*.trigger.*.*.registered",
    "lwfm.*.trigger.*.*.deadline",
    "lwfm.*.trigger.*.*.fired",
    "lwfm.*.trigger.*.*.expired",
    "lwfm.*.trigger.*.*.failed",
]


def _events(triggers: int, count: int) -> Iterator[lb.Event]:
    rng = random.Random(9)
    half = max(1, triggers // 2)
    for i in range(count):
        k = rng.randrange(half)
        if i % 2 == 0:
            yield lb.make_event(
                lb.JobStatus(job_id=f"job{2 * k}", site="local", state=lb.JobState.RUNNING), source="/bench"
            )
        else:
            data = lb.DataArrival(
                data_id=lb.new_id(), site="local", location=f"/data/{i}",
                metadata={"sample": f"s{2 * k + 1}", "step": 1, "kind": "mesh"},
            )  # fmt: skip
            yield lb.make_event(data, source="/bench")


async def raw_consumer(
    bus: lb.Bus,
    name: str,
    filters: list[str],
    count: int,
    timeout: float,
    *,
    time_box: float | None = None,
    start_seq: int | None = None,
) -> dict[str, float]:
    """A plain durable push consumer: receive, ack, nothing else.

    Timed like the engine: over the job and data events only, from the first one's
    arrival to the last one's ack.  With ``time_box`` it stops after that many seconds
    (for a consumer too slow to finish) and reports its rate so far.
    """
    js = bus.jetstream
    first: float | None = None
    last = 0.0
    got = 0
    done = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        nonlocal first, last, got
        timed = ".trigger." not in msg.subject
        if timed and first is None:
            first = time.perf_counter()
        await msg.ack()
        if timed:
            got += 1
            last = time.perf_counter()
            if got >= count and not done.done():
                done.set_result(None)

    where: dict[str, Any] = {"filter_subjects": filters} if len(filters) > 1 else {"filter_subject": filters[0]}
    if start_seq is not None:
        where.update(deliver_policy=nats.js.api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    config = nats.js.api.ConsumerConfig(max_ack_pending=1024, ack_wait=30, **where)
    sub = await js.subscribe(
        "", stream=STREAM, durable=name, cb=on_msg, manual_ack=True, config=config,
        pending_msgs_limit=0, pending_bytes_limit=0,
    )  # fmt: skip
    try:
        with contextlib.suppress(TimeoutError) if time_box is not None else contextlib.nullcontext():
            await asyncio.wait_for(done, time_box or timeout)
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(STREAM, name)
    if first is None or got < 2:
        return {"events": got, "seconds": 0.0, "rate": math.nan}
    return {"events": got, "seconds": round(last - first, 3), "rate": got / (last - first)}


async def feed_floor(bus: lb.Bus, count: int, timeout: float) -> float:
    """Trigger events per second through a bare ordered consumer: the floor under the index rebuild."""
    sub = await bus.jetstream.subscribe(
        "lwfm.*.trigger.>", stream=STREAM, ordered_consumer=True,
        config=nats.js.api.ConsumerConfig(deliver_policy=nats.js.api.DeliverPolicy.ALL),
    )  # fmt: skip
    try:
        t0 = time.perf_counter()
        async with asyncio.timeout(timeout):
            for _ in range(count):
                await sub.next_msg(timeout=None)
        return count / (time.perf_counter() - t0)
    finally:
        await sub.unsubscribe()


async def _predigest_registrations(bus: lb.Bus, filters: list[str], count: int, timeout: float) -> None:
    """The engine's durable consumer, as if an earlier replica had digested every registration.

    Created with the engine's own settings, then read on its delivery subject by a
    plain subscriber that acks the ``count`` registrations, leaves, and naks the events
    it was handed meanwhile (so that they come back at once, to the engine).  The engine finds a consumer
    whose settings it would have chosen, its ack floor past the registrations: its work
    loop begins with the events, while its feed still indexes every trigger at start.
    """
    cfg = lb.EngineConfig()
    max_pending = max(1024, cfg.max_inflight * 4)
    deliver = f"{_engine.DURABLE}.{STREAM}.deliver"
    await bus.jetstream.add_consumer(
        STREAM,
        nats.js.api.ConsumerConfig(
            durable_name=_engine.DURABLE, deliver_subject=deliver, deliver_group=_engine.DURABLE,
            deliver_policy=nats.js.api.DeliverPolicy.ALL, ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait_s, max_ack_pending=max_pending, filter_subjects=filters,
        ),
    )  # fmt: skip
    acked = 0
    held: list[Any] = []
    done = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        nonlocal acked
        if not is_trigger_event(msg.subject):
            held.append(msg)  # an event: for the engine (every registration precedes it in the stream)
            return
        await msg.ack()
        acked += 1
        if acked >= count and not done.done():
            done.set_result(None)

    sub = await bus.nats.subscribe(deliver, queue=_engine.DURABLE, cb=on_msg, pending_msgs_limit=0)
    try:
        async with asyncio.timeout(timeout):
            await done
            # Stay until every message the server counts as delivered is in our hands
            # (it stops at max_ack_pending, or when none is left): one sent to a
            # subscriber that has just left would come back only after the ack wait.
            while True:
                info = await bus.jetstream.consumer_info(STREAM, _engine.DURABLE)
                if info.num_ack_pending == len(held) and (len(held) >= max_pending or info.num_pending == 0):
                    break
                await asyncio.sleep(0.05)
    finally:
        await sub.drain()  # type: ignore[no-untyped-call]
        for msg in held:
            await msg.nak()  # redelivered at once, to the engine


async def run(triggers: int, events: int, tmp: Path, timeout: float = 100.0) -> dict[str, Any]:
    """The engine as it is, then with its work consumer given one filter; raw consumers around each."""
    async with bench_bus(tmp) as (server, bus):
        t0 = time.perf_counter()
        await bulk_publish(bus, (registration(mixed_trigger(i)) for i in range(triggers)))
        first_event, _ = await bulk_publish(bus, _events(triggers, events))
        log(f"ingest: published {triggers} registrations and {events} events in {time.perf_counter() - t0:.1f} s")
        floor = await feed_floor(bus, triggers, timeout)
        raws = [await raw_consumer(bus, "bench-raw-0", [ALL], events, timeout)]
        engine_filters = await raw_consumer(
            bus, "bench-raw-engine-filters", MULTI_FILTERS, events, timeout, time_box=5, start_seq=first_event
        )
        out: dict[str, Any] = {"triggers": triggers, "events": events, "first_event_seq": first_event}
        for variant, filters in (("as_is", [ALL]),):
            t1 = time.perf_counter()
            await _predigest_registrations(bus, filters, triggers, timeout)
            log(f"ingest ({variant}): registrations pre-digested in {time.perf_counter() - t1:.1f} s")
            async with probed_engine(bus, measured=lambda s: not is_trigger_event(s), server_pid=server.pid) as (
                engine,
                probe,
            ):
                log(f"ingest ({variant}): engine started in {probe.startup_s:.1f} s, {len(engine.index)} indexed")
                await probe.wait_for(lambda: probe.measured_done >= events, timeout)
                cpu = probe.close_window(variant)
                log(f"ingest ({variant}): {events} events judged at {probe.window_rate():.0f}/s")
                stats = engine.stats
                indexed = len(engine.index)
            await bus.jetstream.delete_consumer(STREAM, _engine.DURABLE)
            raws.append(await raw_consumer(bus, f"bench-raw-{len(raws)}", [ALL], events, timeout))
            raw = (raws[-2]["rate"] + raws[-1]["rate"]) / 2
            rate = probe.window_rate()
            out[variant] = {
                "filters": filters,
                "indexed": indexed,
                "engine_errors": stats.errors,
                "startup_s": round(probe.startup_s, 2),
                "engine_rate": round(rate),
                "engine_window_s": round(probe.last_end - (probe.first_start or probe.last_end), 3),
                "engine_window_cpu": cpu,
                "raw_before_rate": round(raws[-2]["rate"]),
                "raw_after_rate": round(raws[-1]["rate"]),
                "raw_rate": round(raw),
                "ratio": round(rate / raw, 3),
            }
        out["raw_with_engine_filters_rate"] = round(engine_filters["rate"])
        out["feed_floor_rate"] = round(floor)
        out["index_rebuild_rate"] = round(triggers / out["as_is"]["startup_s"])
    return out


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    triggers, events = (2_000, 5_000) if quick else (100_000, 20_000)
    r = asyncio.run(run(triggers, events, tmp, timeout=scaled(20 if quick else 100)))
    a = r["as_is"]
    figs = [
        figure(
            ITEM, f"engine ingest, {triggers:,} triggers registered", a["engine_rate"], "events/s",
            target=("ratio", ">=", 0.6), baseline=a["raw_rate"],
            baseline_label=f"raw push consumer, filter `lwfm.>` (with seven filters, as the engine had: "
            f"{r['raw_with_engine_filters_rate']:,}/s)",
            ratio=a["ratio"], ratio_label="of raw", note=f"{events:,} events, none fires", quick=quick,
        ),
        figure(
            ITEM, f"engine start with {triggers:,} triggers (index rebuilt from the stream)", a["startup_s"], "s",
            baseline=round(triggers / r["feed_floor_rate"], 2), baseline_label="bare ordered consumer over the same",
            ratio=round(a["startup_s"] * r["feed_floor_rate"] / triggers, 2), ratio_label="of bare", quick=quick,
        ),
    ]  # fmt: skip
    return figs, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triggers", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args.triggers, args.events, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
