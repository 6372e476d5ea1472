"""``find`` with two predicates over 1 M notated records (target p50 <= 10 ms).

The records go through the index's own projection (``apply_data_many``, what a
catch-up from the stream runs), written straight into a SQLite file: ``find`` is
what is measured, not the server.  Each record has ``kind`` (10 values), ``step``
(0..999) and ``sample`` (100 000 values).  Three queries, because a planner's cost
depends on selectivity more than on size:

* selective: ``sample`` equal (about 10 records) and ``step >= 100``;
* broad: ``kind`` equal (10 %) and ``step >= 100`` (90 %): the first page of 100;
* jointly narrow: ``kind`` equal (10 %) and ``step`` in [500, 510) (1 %): 0.1 % match.

Baseline, same run: the same rows in a bare SQLite table with one column per key and
an index per column, the same two predicates as one SQL query, SQLite planning it
(the floor under any ``find``; it knows nothing of typed, multi-valued metadata).

    .venv/bin/python -m bench.find [--records 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import aiosqlite

import lwfm_bus as lb
from bench._common import Figure, figure, log
from lwfm_bus._index import _data as _index_data

ITEM = "find"
TARGET: tuple[Literal["value"], Literal["<="], float] = ("value", "<=", 10.0)

_QUERIES: dict[str, tuple[dict[str, Any], str, tuple[Any, ...]]] = {
    "selective": (
        {"sample": "s123", "step": lb.Range(ge=100)},
        "sample = ? AND step >= ?",
        ("s123", 100),
    ),
    "broad": (
        {"kind": "k3", "step": lb.Range(ge=100)},
        "kind = ? AND step >= ?",
        ("k3", 100),
    ),
    "jointly narrow": (
        {"kind": "k3", "step": lb.Range(ge=500, lt=510)},
        "kind = ? AND step >= ? AND step < ?",
        ("k3", 500, 510),
    ),
}


def _metadata(rng: random.Random) -> dict[str, Any]:
    return {"kind": f"k{rng.randrange(10)}", "step": rng.randrange(1000), "sample": f"s{rng.randrange(100_000)}"}


async def build(path: Path, records: int) -> float:
    """The index file with ``records`` data records; returns records per second."""
    rng = random.Random(1)
    t0 = time.perf_counter()
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.executescript(_index_data.DATA_SCHEMA)
        batch: list[tuple[lb.DataEvent, int]] = []
        for i in range(records):
            event = lb.make_event(
                lb.DataArrival(data_id=f"d{i}", site="local", location=f"/r/{i}", metadata=_metadata(rng)),
                source="/bench",
            )
            assert isinstance(event, lb.DataEvent)
            batch.append((event, i + 1))
            if len(batch) == 5000:
                await _index_data.apply_data_many(db, batch)
                await db.commit()
                batch.clear()
        await _index_data.apply_data_many(db, batch)
        await db.commit()
    return records / (time.perf_counter() - t0)


def build_baseline(path: Path, records: int) -> None:
    rng = random.Random(1)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (rid INTEGER PRIMARY KEY, kind TEXT, step INTEGER, sample TEXT, location TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
            ((i + 1, *_metadata(rng).values(), f"/r/{i}") for i in range(records)),
        )
        for col in ("kind", "step", "sample"):
            db.execute(f"CREATE INDEX t_{col} ON t ({col})")
        db.execute("ANALYZE")


async def time_find(path: Path, where: dict[str, Any], runs: int) -> tuple[list[float], int]:
    async with aiosqlite.connect(path) as db:
        db.row_factory = aiosqlite.Row
        await _index_data.install_functions(db)
        query = lb.DataQuery(where=where, limit=100)
        lat: list[float] = []
        found = 0
        for i in range(runs + 5):
            t0 = time.perf_counter()
            page = await _index_data.find(db, query)
            if i >= 5:  # warm-up
                lat.append((time.perf_counter() - t0) * 1000)
            found = len(page.records)
    return lat, found


async def time_baseline(path: Path, sql: str, params: tuple[Any, ...], runs: int) -> list[float]:
    async with aiosqlite.connect(path) as db:
        lat: list[float] = []
        for i in range(runs + 5):
            t0 = time.perf_counter()
            async with db.execute(f"SELECT * FROM t WHERE {sql} ORDER BY rid LIMIT 101", params) as cur:
                await cur.fetchall()
            if i >= 5:
                lat.append((time.perf_counter() - t0) * 1000)
    return lat


async def run(records: int, runs: int, tmp: Path) -> dict[str, Any]:
    log(f"building an index of {records:,} records")
    rate = await build(tmp / "index.sqlite", records)
    build_baseline(tmp / "bare.sqlite", records)
    out: dict[str, Any] = {"records": records, "projection_records_per_s": round(rate)}
    for name, (where, sql, params) in _QUERIES.items():
        lat, found = await time_find(tmp / "index.sqlite", where, runs)
        base = await time_baseline(tmp / "bare.sqlite", sql, params, runs)
        out[name] = {
            "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(sorted(lat)[max(0, int(len(lat) * 0.99) - 1)], 2),
            "baseline_p50_ms": round(statistics.median(base), 2),
            "page": found,
        }
        log(f"{name}: {out[name]}")
    return out


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    records = 20_000 if quick else 1_000_000
    r = asyncio.run(run(records, 20 if quick else 100, tmp))
    size = "20 k" if quick else "1 M"
    figs = [
        figure(
            ITEM, f"`find`, two predicates, {size} records, {name}, p50", r[name]["p50_ms"], "ms",
            target=TARGET, baseline=r[name]["baseline_p50_ms"],
            baseline_label="(bare SQLite table, a column and an index per key, same predicates)",
            ratio=round(r[name]["p50_ms"] / max(r[name]["baseline_p50_ms"], 1e-3), 2), ratio_label="of the bare query",
            note=f"p99 {r[name]['p99_ms']} ms; page of {r[name]['page']}", quick=quick,
        )
        for name in _QUERIES
    ]  # fmt: skip
    return figs, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args.records, args.runs, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
