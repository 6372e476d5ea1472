"""Matching cost per event against 1 k, 100 k and 1 M registered triggers (issue 4, item 6; issue 9).

Measures the engine's in-memory index alone (no server): the part whose cost must not
grow with the number of triggers.  Half the triggers are job-status triggers on their
own upstream job, half data-flow triggers anchored on an equality and refined by a
range.  Each event is looked up and its candidates checked exactly, as the engine does.

Events name triggers uniformly at random, the worst case for CPU caches.  So that the
growth can be told apart from the machine's memory hierarchy, the same run measures a
baseline: a bare ``dict.get`` of the same keys in a dict of the same size.

    .venv/bin/python bench/matching.py            # 1k, 100k, 1M
    .venv/bin/python bench/matching.py --quick    # 1k, 10k
    .venv/bin/python bench/matching.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lwfm_bus import DataTrigger, Downstream, Eq, JobDefn, JobState, JobTrigger, Range, Upstream
from lwfm_bus._engine._matcher import TriggerIndex, satisfies

if TYPE_CHECKING:
    from bench._common import Figure

ITEM = "matching"
_DOWN = Downstream(job=JobDefn.of(["true"]))


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def build(n: int) -> tuple[TriggerIndex, int]:
    """An index with ``n`` triggers; returns it and its RSS growth in bytes."""
    gc.collect()
    before = _rss_bytes()
    index = TriggerIndex()
    for i in range(n):
        if i % 2 == 0:
            t: JobTrigger | DataTrigger = JobTrigger(
                trigger_id=f"t{i}", upstream=Upstream(job_id=f"job{i}"), downstream=_DOWN
            )
        else:
            t = DataTrigger(
                trigger_id=f"t{i}", signature={"sample": Eq(value=f"s{i}"), "step": Range(ge=3)}, downstream=_DOWN
            )
        index.add(t, i + 1)
    gc.collect()
    return index, _rss_bytes() - before


def baseline(n: int, events: int = 20_000) -> float:
    """ns per lookup of a random key in a plain dict of ``n // 2`` job ids, same pattern."""
    table = {f"job{2 * i}": i for i in range(max(1, n // 2))}
    rng = random.Random(7)
    keys = [f"job{2 * rng.randrange(max(1, n // 2))}" for _ in range(events)]
    samples = []
    for rep in range(5):
        t0 = time.perf_counter_ns()
        for key in keys:
            table.get(key)
        if rep:
            samples.append((time.perf_counter_ns() - t0) / events)
    return statistics.median(samples)


def measure(index: TriggerIndex, n: int, events: int = 20_000) -> dict[str, float]:
    rng = random.Random(7)
    job_ids = [f"job{2 * rng.randrange(max(1, n // 2))}" for _ in range(events)]
    data = [
        ({"sample": f"s{2 * rng.randrange(max(1, n // 2)) + 1}", "step": rng.randrange(6), "kind": "mesh"}, "local")
        for _ in range(events)
    ]
    samples_job: list[float] = []
    samples_data: list[float] = []
    candidates = 0
    for rep in range(5):
        t0 = time.perf_counter_ns()
        hits = 0
        for job_id in job_ids:
            for _watch, mask in index.by_job(job_id):
                hits += satisfies(mask, JobState.COMPLETE)
                candidates += 1
        t1 = time.perf_counter_ns()
        for metadata, site in data:
            hits += len(index.by_data(metadata, site, None))  # type: ignore[arg-type]
        t2 = time.perf_counter_ns()
        assert hits > 0
        if rep:  # the first round warms caches
            samples_job.append((t1 - t0) / events)
            samples_data.append((t2 - t1) / events)
    return {
        "job_event_ns": statistics.median(samples_job),
        "data_event_ns": statistics.median(samples_data),
        "job_candidates_per_event": candidates / (5 * events),
    }


def run(sizes: list[int]) -> list[dict[str, float]]:
    """One row per size: per-event costs, the dict.get baseline, index bytes, and ratios to the first size."""
    rows: list[dict[str, float]] = []
    for n in sizes:
        t0 = time.perf_counter()
        index, grown = build(n)
        built = time.perf_counter() - t0
        row = {"triggers": n, "build_s": round(built, 2), "bytes_per_trigger": round(grown / n), **measure(index, n)}
        del index
        row["dict_baseline_ns"] = baseline(n)
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["ratio_job"] = round(r["job_event_ns"] / base["job_event_ns"], 2)
        r["ratio_data"] = round(r["data_event_ns"] / base["data_event_ns"], 2)
        r["ratio_dict_baseline"] = round(r["dict_baseline_ns"] / base["dict_baseline_ns"], 2)
    return rows


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    """For the suite: each size's cost per event; the largest judged against 1.5x of the smallest."""
    from bench._common import figure

    sizes = [1_000, 10_000] if quick else [1_000, 100_000, 1_000_000]
    rows = run(sizes)
    figs = []
    for kind, key, ratio in (("job", "job_event_ns", "ratio_job"), ("data", "data_event_ns", "ratio_data")):
        for r in rows:
            n = int(r["triggers"])
            judged = n == 1_000_000
            figs.append(
                figure(
                    ITEM, f"matching, {kind} event, {n:,} triggers", round(r[key]), "ns",
                    target=("ratio", "<=", 1.5) if judged else None,
                    baseline=round(r["dict_baseline_ns"]) if n != sizes[0] else None,
                    baseline_label=f"dict.get, same size ({r['ratio_dict_baseline']:.2f}x of 1 k)"
                    if n != sizes[0] else "",
                    ratio=r[ratio] if n != sizes[0] else None, ratio_label="of 1 k", quick=quick,
                    note=f"{r['bytes_per_trigger']:,} index B/trigger",
                )
            )  # fmt: skip
    return figs, {"rows": rows, "machine": platform.machine(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k and 10k only (seconds)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 100_000, 1_000_000]
    rows = run(sizes)
    print(f"matching cost per event ({platform.machine()}, Python {platform.python_version()})")
    print(
        f"{'triggers':>10} {'job event':>12} {'data event':>12} {'vs 1k (job/data)':>18} "
        f"{'dict.get':>10} {'vs 1k':>6} {'index B/trigger':>16}"
    )
    for r in rows:
        print(
            f"{r['triggers']:>10,} {r['job_event_ns']:>9.0f} ns {r['data_event_ns']:>9.0f} ns "
            f"{r['ratio_job']:>8.2f} / {r['ratio_data']:<7.2f} {r['dict_baseline_ns']:>7.0f} ns "
            f"{r['ratio_dict_baseline']:>6.2f} {r['bytes_per_trigger']:>16,}"
        )
    print("target: 1 M within 1.5x of 1 k; dict.get is a bare lookup in a dict of the same size, same run")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "matching", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
