"""Background load: unrelated job events at a paced rate, from a process of its own.

    python bench/_background.py --url nats://127.0.0.1:PORT --rate 1000 --seconds 120

Publishes ``RUNNING`` events of jobs no trigger waits for (each one still passes
through the engine's consumer, its decoding and its index lookup, as real traffic
does) on an absolute schedule -- event *i* is due at ``start + i / rate`` -- so a slow
moment is caught up rather than lowering the rate.  A separate process, so that the
load does not share the event loop (or the GIL) of the engine being measured.

Prints ``started`` once connected, then at the end one JSON line with what it did.
Stops on SIGTERM or SIGINT, or after ``--seconds``, whichever comes first.  Imports
only lwfm_bus, so it runs as a plain script from anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import lwfm_bus as lb


async def run(url: str, rate: float, seconds: float, home: Path) -> dict[str, float]:
    config = lb.BusConfig.model_validate({"servers": (url,), "home": home, "engine": "off"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    published = failed = late = 0
    async with lb.connect(config, name="bench-background") as bus:
        inflight = asyncio.Semaphore(256)
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            nonlocal published, failed
            event = lb.make_event(
                lb.JobStatus(job_id=f"bg-{i}", site="local", state=lb.JobState.RUNNING), source="/bench/background"
            )
            try:
                await bus.publish(event)
                published += 1
            except lb.PublishError:
                failed += 1
            finally:
                inflight.release()

        print("started", flush=True)
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            elif wait < -0.05:
                late += 1
            if stop.is_set():
                break
            await inflight.acquire()
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = time.perf_counter() - start
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    return {
        "published": published,
        "failed": failed,
        "late_over_50ms": late,
        "seconds": round(elapsed, 2),
        "rate": round(published / elapsed, 1) if elapsed else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=120.0, help="the most it runs")
    parser.add_argument("--home", type=Path, required=True, help="a scratch home for this process")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.rate, args.seconds, args.home))), flush=True)


if __name__ == "__main__":
    main()
