"""Engine memory per registered trigger: RSS delta / count (target <= 2 KB).

The engine runs in a process of its own (``python -m bench.memory --child ...``), so
its resident set holds nothing of the publisher's: it connects to this benchmark's
server, starts one replica, reports its RSS once ready with an empty index, then --
after this process has published N registrations (the matching benchmark's mix) and
the engine has indexed and acknowledged every one -- collects garbage and reports
its RSS again.  The figure is the difference over N: everything the engine keeps per
trigger, the index, the cache of recent definitions (``EngineConfig.definition_cache``,
10 000 by default) and whatever the allocator does not give back.

Baseline, same run, also in a fresh process: the bare :class:`TriggerIndex` holding
the same N triggers (what matching needs and nothing more).

    .venv/bin/python -m bench.memory [--triggers 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import lwfm_bus as lb
from bench._common import (
    Figure,
    bench_bus,
    bulk_publish,
    figure,
    mixed_trigger,
    probed_engine,
    registration,
    rss_bytes,
    scaled,
)
from lwfm_bus._engine._matcher import TriggerIndex

ITEM = "memory"


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def child_engine(url: str, home: Path, count: int, timeout: float) -> None:
    """The engine side: report RSS when ready (empty), and again once ``count`` triggers are indexed."""
    config = lb.BusConfig.model_validate({"servers": (url,), "home": home, "engine": "off"})
    async with lb.connect(config, name="bench-memory-engine") as bus:
        async with probed_engine(bus, fast_registration=True) as (engine, probe):
            gc.collect()
            _say(phase="ready", rss=rss_bytes(), indexed=len(engine.index))
            await probe.wait_for(lambda: probe.done >= count and len(engine.index) >= count, timeout)
            gc.collect()
            _say(phase="indexed", rss=rss_bytes(), indexed=len(engine.index), cached=engine.cached_definitions)


def child_index(count: int) -> None:
    """The baseline side: the bare index, built from the same triggers."""
    triggers = [mixed_trigger(i) for i in range(count)]
    gc.collect()
    before = rss_bytes()
    index = TriggerIndex()
    for i, t in enumerate(triggers):
        index.add(t, i + 1)
    gc.collect()
    _say(phase="index", rss_delta=rss_bytes() - before, indexed=len(index))


async def _read(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the engine process ended early (exit code {await proc.wait()})")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.memory", "--child", *args, stdout=asyncio.subprocess.PIPE
    )


async def run(count: int, tmp: Path, timeout: float = 90.0) -> dict[str, Any]:
    async with bench_bus(tmp) as (server, bus):
        proc = await _spawn("engine", "--url", server.url, "--home", str(tmp / "engine-home"), "--triggers", str(count))
        try:
            ready = await _read(proc, 30)
            await bulk_publish(bus, (registration(mixed_trigger(i)) for i in range(count)))
            indexed = await _read(proc, timeout)
            async with asyncio.timeout(30):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    base_proc = await _spawn("index", "--triggers", str(count))
    try:
        base = await _read(base_proc, timeout)
        async with asyncio.timeout(30):
            await base_proc.wait()
    finally:
        if base_proc.returncode is None:
            base_proc.kill()
            await base_proc.wait()
    delta = indexed["rss"] - ready["rss"]
    return {
        "triggers": count,
        "indexed": indexed["indexed"],
        "definitions_cached": indexed["cached"],
        "rss_ready_bytes": ready["rss"],
        "rss_indexed_bytes": indexed["rss"],
        "bytes_per_trigger": round(delta / count),
        "bare_index_bytes_per_trigger": round(base["rss_delta"] / count),
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    n = 5_000 if quick else 100_000
    r = asyncio.run(run(n, tmp, timeout=scaled(15 if quick else 90)))
    per, bare = r["bytes_per_trigger"], r["bare_index_bytes_per_trigger"]
    fig = figure(
        ITEM, f"engine RSS per registered trigger ({n:,} triggers)", per, "B", target=("value", "<=", 2048),
        baseline=bare, baseline_label="(bare TriggerIndex, same triggers)",
        ratio=round(per / bare, 2) if bare else None, ratio_label="of bare index",
        note=f"{r['definitions_cached']:,} definitions cached", quick=quick,
    )  # fmt: skip
    return [fig], r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triggers", type=int, default=100_000)
    parser.add_argument("--child", choices=["engine", "index"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "engine":
        asyncio.run(child_engine(args.url, args.home, args.triggers, timeout=600))
    elif args.child == "index":
        child_index(args.triggers)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(asyncio.run(run(args.triggers, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
