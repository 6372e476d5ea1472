"""The metadata repository's half of the index: data records and ``find``.

Each metadata value is stored once per element in ``data_meta`` (key, kind, value),
indexed by (key, kind, value), so every predicate is an index range -- equality a
point, a numeric range an interval, a glob the interval of its literal prefix
refined by a real glob test, presence the key's whole range.  Nothing is matched by
scanning with regular expressions (what the original lwfm did).

SQL text here is assembled only from constant fragments (column names, operators);
every value a user gives is a bound parameter -- hence the ``noqa: S608`` marks.

``find`` plans each query itself, because SQLite's planner cannot know how selective
a value is: it counts, up to a small cap, the rows each predicate and filter admits,
then drives the query from the most selective one and checks the others per
candidate.  When every condition is broad, it walks the records in the requested
order instead and stops once the page is full.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from .._events import DataEvent
from .._meta import Metadata, MetaScalar
from .._query import DataPage, DataQuery, DataRecord
from .._triggers import Eq, Glob, Predicate, Present, Range

__all__ = [
    "DATA_SCHEMA",
    "DATA_TABLES",
    "apply_data_many",
    "find",
    "install_functions",
    "latest_at",
    "record_by_id",
]

DATA_SCHEMA = """
CREATE TABLE IF NOT EXISTS data (
    rid INTEGER PRIMARY KEY,
    data_id TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL,
    location TEXT NOT NULL,
    size INTEGER,
    checksum TEXT,
    job_id TEXT,
    workflow_id TEXT,
    direction TEXT,
    origin_site TEXT,
    origin TEXT,
    time TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS data_by_workflow ON data (workflow_id, rid);
CREATE INDEX IF NOT EXISTS data_by_job ON data (job_id, rid);
CREATE INDEX IF NOT EXISTS data_by_location ON data (site, location, rid);
CREATE TABLE IF NOT EXISTS data_meta (
    rid INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    v NOT NULL,
    PRIMARY KEY (rid, key, kind, v)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS data_meta_by_value ON data_meta (key, kind, v);
"""
DATA_TABLES = ("data", "data_meta")

# Counting starts at _CAP rows per condition and goes up to _CEILING; a condition admitting
# fewer rows than that drives the query.  Beyond, walking the records in order is cheaper.
_CAP = 2000
_CEILING = 32_000
_TOP = "\U0010ffff"  # sorts after every character: the end of a prefix's interval


def install_functions(db: aiosqlite.Connection) -> Any:
    """Register the glob test, with Python's exact semantics (``fnmatch``, case-sensitive)."""
    return db.create_function("lwfm_glob", 2, _glob, deterministic=True)


def _glob(pattern: str, value: object) -> bool:
    return isinstance(value, str) and fnmatch.fnmatchcase(value, pattern)


def _kind_of(value: MetaScalar) -> tuple[str, object]:
    if isinstance(value, bool):
        return "b", int(value)
    if isinstance(value, int | float):
        return "n", value
    return "s", value


def _rows(rid: int, metadata: Metadata) -> list[tuple[int, str, str, object]]:
    rows: list[tuple[int, str, str, object]] = []
    for key, value in metadata.items():
        if isinstance(value, list):
            if not value:
                rows.append((rid, key, "e", ""))  # present, with no element
            rows.extend((rid, key, *_kind_of(v)) for v in value)
        else:
            rows.append((rid, key, *_kind_of(value)))
    return rows


async def apply_data_many(db: aiosqlite.Connection, batch: Sequence[tuple[DataEvent, int]]) -> None:
    """Record a batch of data events in two statements (a catch-up applies thousands a second)."""
    if not batch:
        return
    await db.executemany(
        "INSERT OR IGNORE INTO data (rid, data_id, site, location, size, checksum, job_id, workflow_id, "
        "direction, origin_site, origin, time, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                seq, e.data.data_id, e.data.site, e.data.location, e.data.size, e.data.checksum, e.data.job_id,
                e.data.workflow_id, e.data.direction, e.data.origin_site, e.data.origin, e.time.isoformat(),
                json.dumps(e.data.metadata, separators=(",", ":")),
            )
            for e, seq in batch
        ],
    )  # fmt: skip
    # A data id seen before keeps its first record: only rows that went in get their values.
    seqs = [seq for _, seq in batch]
    marks = ",".join("?" * len(seqs))
    async with db.execute(f"SELECT rid FROM data WHERE rid IN ({marks})", seqs) as cur:  # noqa: S608
        stored = {int(r[0]) for r in await cur.fetchall()}
    rows = [row for e, seq in batch if seq in stored for row in _rows(seq, e.data.metadata)]
    await db.executemany("INSERT OR IGNORE INTO data_meta (rid, key, kind, v) VALUES (?, ?, ?, ?)", rows)


def _condition(key: str, predicate: Predicate, alias: str) -> tuple[str, list[object]]:
    """SQL over ``alias`` (a data_meta row) for one predicate, and its parameters."""
    if isinstance(predicate, Eq):
        kind, value = _kind_of(predicate.value)
        return f"{alias}.key = ? AND {alias}.kind = ? AND {alias}.v = ?", [key, kind, value]
    if isinstance(predicate, Range):
        sql: list[str] = [f"{alias}.key = ? AND {alias}.kind = 'n'"]
        params: list[object] = [key]
        for op, bound in ((">=", predicate.ge), (">", predicate.gt), ("<=", predicate.le), ("<", predicate.lt)):
            if bound is not None:
                sql.append(f"{alias}.v {op} ?")
                params.append(bound)
        return " AND ".join(sql), params
    if isinstance(predicate, Glob):
        prefix = predicate.pattern
        for i, ch in enumerate(prefix):
            if ch in "*?[":
                prefix = prefix[:i]
                break
        else:  # no wildcard: an equality
            return f"{alias}.key = ? AND {alias}.kind = 's' AND {alias}.v = ?", [key, prefix]
        return (
            f"{alias}.key = ? AND {alias}.kind = 's' AND {alias}.v >= ? AND {alias}.v < ? AND lwfm_glob(?, {alias}.v)",
            [key, prefix, prefix + _TOP, predicate.pattern],
        )
    assert isinstance(predicate, Present)
    return f"{alias}.key = ?", [key]


async def _admits(db: aiosqlite.Connection, sql: str, params: Sequence[object], cap: int) -> int:
    async with db.execute(f"SELECT count(*) FROM (SELECT 1 FROM {sql} LIMIT {int(cap)})", params) as cur:  # noqa: S608
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _order(query: DataQuery) -> tuple[str, list[object]]:
    direction = "DESC" if query.descending else "ASC"
    if query.order_by == "time":
        return f"d.rid {direction}", []
    if query.order_by in ("location", "size"):
        return f"d.{query.order_by} {direction}, d.rid {direction}", []
    key = query.order_by.removeprefix("meta:")
    return (
        f"(SELECT min(o.v) FROM data_meta o WHERE o.rid = d.rid AND o.key = ?) {direction}, d.rid {direction}",  # noqa: S608
        [key],
    )


async def find(db: aiosqlite.Connection, query: DataQuery, *, cap: int = _CAP, ceiling: int = _CEILING) -> DataPage:
    """One page of the records matching ``query``, planned as the module docstring says.

    ``cap`` and ``ceiling`` bound the counting (parameters so that tests can force
    either plan on small data).
    """
    checks = [_condition(key, p, "m") for key, p in sorted(query.where.items())]
    filters: list[tuple[str, list[object]]] = [(f"d.{col} = ?", [val]) for col, val in _filters(query)]
    driver = await _most_selective(db, checks, filters, cap, ceiling, query.limit + query.offset)

    where: list[str] = []
    params: list[object] = []
    source = "data d"
    if driver is not None:
        what, i = driver
        if what == "check":
            # The other predicates are checked on the candidates' metadata rows before any
            # record is read: most candidates fail, and a record costs one more lookup.
            sql, p = checks.pop(i)
            inner, inner_params = [sql], list(p)
            for other, (key, predicate) in enumerate(sorted(query.where.items())):
                if other != i:
                    c, cp = _condition(key, predicate, "x")
                    inner.append(f"EXISTS (SELECT 1 FROM data_meta x WHERE x.rid = m.rid AND {c})")  # noqa: S608
                    inner_params.extend(cp)
            checks = []
            params.extend(inner_params)
            source = (
                f"(SELECT DISTINCT m.rid AS rid FROM data_meta m WHERE {' AND '.join(inner)}) c "  # noqa: S608
                "CROSS JOIN data d ON d.rid = c.rid"
            )
        # A driving filter needs nothing special: SQLite uses its index.
    for sql, p in checks:
        where.append(f"EXISTS (SELECT 1 FROM data_meta m WHERE m.rid = d.rid AND {sql})")  # noqa: S608
        params.extend(p)
    for sql, p in filters:
        where.append(sql)
        params.extend(p)
    order, order_params = _order(query)
    params.extend(order_params)
    params.extend([query.limit + 1, query.offset])
    text = (
        f"SELECT d.* FROM {source} {'WHERE ' + ' AND '.join(where) if where else ''} "  # noqa: S608
        f"ORDER BY {order} LIMIT ? OFFSET ?"
    )
    async with db.execute(text, params) as cur:
        rows = list(await cur.fetchall())
    records = [_record(r) for r in rows[: query.limit]]
    more = len(rows) > query.limit
    return DataPage(records=records, next_offset=query.offset + query.limit if more else None)


async def _most_selective(
    db: aiosqlite.Connection,
    checks: list[tuple[str, list[object]]],
    filters: list[tuple[str, list[object]]],
    cap: int,
    ceiling: int,
    wanted: int,
) -> tuple[str, int] | None:
    """The condition admitting the fewest rows, if one admits fewer than ``ceiling`` and
    driving from it is cheaper than walking the records until ``wanted`` have matched.

    Counting stops at a limit, so a broad condition costs no more than a narrow one;
    while every condition reaches the limit it is raised fourfold, up to ``ceiling``.
    The whole search costs a few times the size of the narrowest condition.
    """
    limit = cap
    while checks or filters:
        counts: list[tuple[int, str, int]] = []
        for i, (sql, p) in enumerate(checks):
            counts.append((await _admits(db, f"data_meta m WHERE {sql}", p, limit), "check", i))
        for i, (sql, p) in enumerate(filters):
            counts.append((await _admits(db, f"data d WHERE {sql}", p, limit), "filter", i))
        fewest, what, i = min(counts)
        if fewest < limit:
            return (what, i) if await _driving_pays(db, fewest, counts, wanted) else None
        if limit >= ceiling:
            break
        limit = min(ceiling, limit * 4)
    return None


async def _driving_pays(db: aiosqlite.Connection, fewest: int, counts: list[tuple[int, str, int]], wanted: int) -> bool:
    """Driving costs about ``fewest`` probes; walking about ``wanted`` / (joint density).

    The joint density is estimated as if the conditions were independent, from the
    counts (the broader ones are lower bounds: counting stopped at the limit), over the
    span of record numbers (an upper bound of the record count, read off the primary key).
    """
    # Two subqueries: SQLite answers a lone min() or max() from the key, but not both at once.
    async with db.execute("SELECT (SELECT max(rid) FROM data) - (SELECT min(rid) FROM data) + 1") as cur:
        row = await cur.fetchone()
    span = int(row[0]) if row and row[0] else 1
    density = 1.0
    for count, _, _ in counts:
        density *= min(1.0, max(count, 1) / span)
    return fewest <= wanted / density


def _filters(query: DataQuery) -> list[tuple[str, str]]:
    return [
        (col, val)
        for col, val in (("site", query.site), ("workflow_id", query.workflow_id), ("job_id", query.job_id))
        if val is not None
    ]


async def record_by_id(db: aiosqlite.Connection, data_id: str) -> DataRecord | None:
    async with db.execute("SELECT * FROM data WHERE data_id = ?", (data_id,)) as cur:
        row = await cur.fetchone()
    return _record(row) if row is not None else None


async def latest_at(db: aiosqlite.Connection, site: str, location: str) -> DataRecord | None:
    """The newest record of the bytes at (site, location), if any was notated."""
    async with db.execute(
        "SELECT * FROM data WHERE site = ? AND location = ? ORDER BY rid DESC LIMIT 1", (site, location)
    ) as cur:
        row = await cur.fetchone()
    return _record(row) if row is not None else None


def _record(r: Any) -> DataRecord:
    return DataRecord(
        data_id=r["data_id"],
        site=r["site"],
        location=r["location"],
        metadata=json.loads(r["metadata"]),
        time=datetime.fromisoformat(r["time"]),
        size=r["size"],
        checksum=r["checksum"],
        job_id=r["job_id"],
        workflow_id=r["workflow_id"],
        direction=r["direction"],
        origin_site=r["origin_site"],
        origin=r["origin"],
        seq=r["rid"],
    )
