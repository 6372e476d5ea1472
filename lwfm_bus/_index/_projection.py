"""The SQLite index: a projection of the stream, for queries the stream cannot answer.

It is never written to directly: :meth:`JobIndex.catch_up` replays the stream from the
last applied sequence and applies each event idempotently, so the file can be deleted
at any time and is rebuilt from the stream on the next query.  Several processes
sharing one home serialise their catch-ups with a file lock, so each event is applied
once; a state that arrives late or out of order is judged by the state order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import aiosqlite
import anyio
import nats.js.errors

from .._bus._eventbus import STREAM, EventBus
from .._events import (
    DataEvent,
    DecodeFailure,
    Event,
    EventDecodeError,
    JobStatusEvent,
    TriggerCancelledEvent,
    TriggerExpiredEvent,
    TriggerFailedEvent,
    TriggerFiredEvent,
    TriggerRegisteredEvent,
    WorkflowDefinedEvent,
    WorkspaceChangedEvent,
    decode_event,
)
from .._query import DataPage, DataQuery, DataRecord
from .._states import JobState
from .._subjects import ROOT
from .._triggers import Trigger, trigger_adapter
from .._workspace import WorkspaceRecord
from ._data import DATA_SCHEMA, DATA_TABLES, apply_data_many, find, install_functions, latest_at, record_by_id
from ._ws import WS_SCHEMA, WS_TABLES, apply_workspace, workspace, workspace_names

__all__ = ["JobIndex", "JobRecord", "TriggerRecord", "WorkflowRecord"]

log = logging.getLogger("lwfm_bus.index")

_SMALL_GAP = 64  # new events read one by one rather than through a consumer

# What storing one event can raise: the models bound every value SQLite stores, so these
# mean an event the models accept and the index cannot hold (a bug, or an old event).
_UNAPPLICABLE = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    ValueError,
    TypeError,
)  # not OperationalError: a locked or full database is retried, never a reason to park

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    workflow_id TEXT,
    name TEXT,
    state TEXT NOT NULL,
    native_id TEXT,
    native_state TEXT,
    native_info TEXT,
    info TEXT,
    exit_code INTEGER,
    parent_ids TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    attempt_of TEXT,
    retry_next TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_workflow ON jobs (workflow_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_site_state ON jobs (site, state);
CREATE TABLE IF NOT EXISTS job_history (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    time TEXT NOT NULL,
    exit_code INTEGER,
    info TEXT
);
CREATE INDEX IF NOT EXISTS history_by_job ON job_history (job_id, seq);
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id TEXT PRIMARY KEY,
    name TEXT,
    properties TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS triggers (
    trigger_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT,
    workflow_id TEXT,
    state TEXT NOT NULL,
    fired INTEGER NOT NULL DEFAULT 0,
    last_job_id TEXT,
    reason TEXT,
    definition TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS triggers_by_workflow ON triggers (workflow_id, registered_at);
CREATE INDEX IF NOT EXISTS triggers_by_state ON triggers (state, registered_at);
CREATE TABLE IF NOT EXISTS events_seen (id TEXT PRIMARY KEY) WITHOUT ROWID;
"""

# Bumped when the tables change: an older file is dropped and rebuilt from the stream.
_SCHEMA_VERSION = 5
_TABLES = ("meta", "jobs", "job_history", "workflows", "triggers", "events_seen", *DATA_TABLES, *WS_TABLES)

_TRIGGER_EVENTS = (
    TriggerRegisteredEvent,
    TriggerFiredEvent,
    TriggerExpiredEvent,
    TriggerFailedEvent,
    TriggerCancelledEvent,
)
_RANKS = {s.value: s.rank for s in JobState}


@dataclass(frozen=True)
class JobRecord:
    """What the index knows of a job: its latest state by the state order."""

    job_id: str
    site: str
    workflow_id: str | None
    name: str | None
    state: JobState
    native_id: str | None
    native_state: str | None
    native_info: str | None
    info: str | None
    exit_code: int | None
    parent_ids: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    attempt: int = 1
    """Which attempt of its logical job this job is (see ``attempt_of``)."""
    attempt_of: str | None = None
    """A retry: the logical job's id (its first attempt's)."""
    retry_next: str | None = None
    """A FAILED end its retry policy runs again: the next attempt's id (this end is not the logical job's)."""

    @property
    def logical_id(self) -> str:
        return self.attempt_of or self.job_id


@dataclass(frozen=True)
class TriggerRecord:
    """A registered trigger and what became of it.

    ``state``: ``active`` (waiting, or per-arrival and still firing), ``fired``,
    ``expired``, ``failed`` or ``cancelled``.
    """

    trigger_id: str
    kind: str
    name: str | None
    workflow_id: str | None
    state: str
    fired: int
    last_job_id: str | None
    reason: str | None
    definition: Trigger
    registered_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WorkflowRecord:
    workflow_id: str
    name: str | None
    properties: dict[str, object]
    created_at: datetime


class JobIndex:
    """``async with JobIndex(path, bus) as index``; every query catches up first."""

    def __init__(self, path: Path, bus: EventBus) -> None:
        self._path = path
        self._bus = bus
        self._db: aiosqlite.Connection | None = None
        # One catch-up at a time per index: concurrent queries share one connection, and
        # interleaved catch-ups would commit each other's half-applied batches.
        self._catching_up = asyncio.Lock()

    async def __aenter__(self) -> JobIndex:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        try:
            await self._prepare(self._db)
        except BaseException:  # cancelled or failed half-way: close the connection, do not leak it
            db, self._db = self._db, None
            with anyio.CancelScope(shield=True):
                await db.close()
            raise
        return self

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        db.row_factory = aiosqlite.Row
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        if row is not None and row[0] != _SCHEMA_VERSION:
            for table in _TABLES:
                await db.execute(f"DROP TABLE IF EXISTS {table}")
            await db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        await db.executescript(_SCHEMA + DATA_SCHEMA + WS_SCHEMA)
        await db.commit()
        await install_functions(db)

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the index is not open")
        return self._db

    async def last_seq(self) -> int:
        async with self.db.execute("SELECT value FROM meta WHERE key = 'last_seq'") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def catch_up(self) -> int:
        """Apply every event stored since the last catch-up; return how many were applied."""
        async with self._catching_up:
            try:
                return await self._catch_up()
            except BaseException:
                # Cancelled (a waiter that lost its race) or failed half-way through a batch: what
                # it applied is not committed, and must not stay in the open transaction -- a later
                # catch-up would find the batch's event ids marked as seen and skip them for good.
                with anyio.CancelScope(shield=True):
                    await self.db.rollback()
                raise

    async def _catch_up(self) -> int:
        with open(self._path.with_suffix(".lock"), "a+") as lock:  # noqa: ASYNC230 - a lock file
            if fcntl is not None:
                await anyio.to_thread.run_sync(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
            start = await self.last_seq() + 1
            last = await self._stream_last_seq()
            if last < start:
                return 0  # nothing new: no consumer is made (a loop of lookups must not make one each)
            if last - start < _SMALL_GAP:
                few = await self._read_by_sequence(start, last)
                await self._apply_batch(few)
                await self._commit(last)
                return len(few)
            applied = 0
            batch: list[tuple[Event, int]] = []
            async with self._bus.replay(f"{ROOT}.>", start_seq=start) as history:
                async for event in history:
                    batch.append((event, history.last_seq))
                    applied += 1
                    if len(batch) >= 1000:
                        await self._apply_batch(batch)
                        batch.clear()
                        await self._commit(history.last_seq)
                if history.last_seq:
                    await self._apply_batch(batch)
                    await self._commit(history.last_seq)
            return applied

    async def _read_by_sequence(self, first: int, last: int) -> list[tuple[Event, int]]:
        """A few new events, read one by one (direct gets): cheaper than a consumer, and none is left behind."""
        out: list[tuple[Event, int]] = []
        for seq in range(first, last + 1):
            try:
                raw = await self._bus.jetstream.get_msg(STREAM, seq=seq, direct=True)
            except nats.js.errors.NotFoundError:
                continue  # removed by the stream's limits
            subject, data = raw.subject or "", raw.data or b""
            try:
                out.append((decode_event(data, self._bus.config.max_event_bytes, subject), seq))
            except EventDecodeError as err:
                await self._bus.park(subject, data, err.reason.value, str(err), (STREAM, seq))
        return out

    async def _apply_batch(self, batch: list[tuple[Event, int]]) -> None:
        """Apply events in stream order, each event id once (a foreign client may store one twice).

        Data events touch only their own tables: they are applied together, in two statements.
        """
        seen = await self._seen([event.id for event, _ in batch])
        fresh: list[tuple[Event, int]] = []
        for event, seq in batch:
            if event.id not in seen:
                seen.add(event.id)
                fresh.append((event, seq))
        await self.db.executemany("INSERT OR IGNORE INTO events_seen (id) VALUES (?)", [(e.id,) for e, _ in fresh])
        data: list[tuple[DataEvent, int]] = []
        for event, seq in fresh:
            if isinstance(event, DataEvent):
                data.append((event, seq))
            else:
                await self._apply_or_park(event, seq)
        await self._apply_data(data)

    async def _seen(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(f"SELECT id FROM events_seen WHERE id IN ({marks})", chunk) as cur:  # noqa: S608
                found.update(str(r[0]) for r in await cur.fetchall())
        return found

    async def _apply_or_park(self, event: Event, seq: int) -> None:
        """Apply one event; one the index cannot store is parked with why, and projection goes on."""
        try:
            await self._apply(event, seq)
        except _UNAPPLICABLE as exc:
            await self._park(event, seq, exc)

    async def _apply_data(self, batch: list[tuple[DataEvent, int]]) -> None:
        try:
            await apply_data_many(self.db, batch)
        except _UNAPPLICABLE:
            # One event spoiled the batch: apply them one by one (a repeat is a no-op) and park it.
            for event, seq in batch:
                try:
                    await apply_data_many(self.db, [(event, seq)])
                except _UNAPPLICABLE as exc:
                    await self._park(event, seq, exc)

    async def _park(self, event: Event, seq: int, exc: Exception) -> None:
        log.warning("index: event %s (stream sequence %d) cannot be stored, parked: %r", event.id, seq, exc)
        await self._bus.park(
            event.nats_subject(),
            event.model_dump_json().encode(),
            DecodeFailure.UNUSABLE.value,
            f"the index cannot store it: {exc!r}",
            (STREAM, seq),
        )

    async def _stream_last_seq(self) -> int:
        try:
            info = await self._bus.jetstream.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.last_seq)

    async def _commit(self, seq: int) -> None:
        await self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(seq),),
        )
        await self.db.commit()

    async def _apply(self, event: Event, seq: int) -> None:
        if isinstance(event, JobStatusEvent):
            await self._apply_job(event, seq)
        elif isinstance(event, WorkspaceChangedEvent):
            await apply_workspace(self.db, event, seq)
        elif isinstance(event, _TRIGGER_EVENTS):
            await self._apply_trigger(event)
        elif isinstance(event, WorkflowDefinedEvent):
            d = event.data
            await self.db.execute(
                "INSERT INTO workflows (workflow_id, name, properties, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(workflow_id) DO UPDATE SET name = excluded.name, properties = excluded.properties",
                (d.workflow_id, d.name, json.dumps(d.properties), event.time.isoformat()),
            )

    async def _apply_trigger(self, event: Event) -> None:
        t = event.time.isoformat()
        d = event.data
        tid = getattr(d, "trigger_id", "")
        if isinstance(event, TriggerRegisteredEvent):
            trig = event.data.definition
            await self.db.execute(
                "INSERT OR IGNORE INTO triggers (trigger_id, kind, name, workflow_id, state, definition, "
                "registered_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
                (tid, trig.kind, trig.name, trig.workflow_id, trig.model_dump_json(), t, t),
            )
        elif isinstance(event, TriggerFiredEvent):
            await self.db.execute(
                "UPDATE triggers SET fired = fired + 1, last_job_id = ?, updated_at = ?, "
                "state = CASE WHEN (kind = 'data-flow' AND json_extract(definition, '$.fire') = 'each') "
                "OR kind = 'schedule' THEN state ELSE 'fired' END WHERE trigger_id = ?",
                (event.data.downstream_job_id, t, tid),
            )
        elif isinstance(event, TriggerExpiredEvent):
            await self.db.execute(
                "UPDATE triggers SET state = 'expired', reason = ?, last_job_id = COALESCE(?, last_job_id), "
                "updated_at = ? WHERE trigger_id = ?",
                (event.data.reason, event.data.fallback_job_id, t, tid),
            )
        elif isinstance(event, TriggerFailedEvent):
            await self.db.execute(
                "UPDATE triggers SET state = 'failed', reason = ?, updated_at = ? WHERE trigger_id = ?",
                (event.data.reason, t, tid),
            )
        elif isinstance(event, TriggerCancelledEvent):
            await self.db.execute(
                "UPDATE triggers SET state = 'cancelled', reason = ?, updated_at = ? "
                "WHERE trigger_id = ? AND state = 'active'",
                (event.data.reason, t, tid),
            )

    async def _apply_job(self, event: JobStatusEvent, seq: int) -> None:
        d = event.data
        t = event.time.isoformat()
        await self.db.execute(
            "INSERT OR IGNORE INTO job_history (seq, job_id, state, time, exit_code, info) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, d.job_id, d.state.value, t, d.exit_code, d.info or d.native_info),
        )
        async with self.db.execute("SELECT state FROM jobs WHERE job_id = ?", (d.job_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            await self.db.execute(
                "INSERT INTO jobs (job_id, site, workflow_id, name, state, native_id, native_state, native_info, "
                "info, exit_code, parent_ids, created_at, updated_at, seq, attempt, attempt_of, retry_next) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.job_id, d.site, d.workflow_id, d.name, d.state.value, d.native_id, d.native_state,
                    d.native_info, d.info, d.exit_code, json.dumps(list(d.parent_ids)), t, t, seq,
                    d.attempt or 1, d.attempt_of, d.retry_next,
                ),
            )  # fmt: skip
            return
        if not d.state.supersedes(JobState(row["state"])):
            return  # a late or out-of-order report: the job has moved on
        await self.db.execute(
            "UPDATE jobs SET state = ?, native_id = COALESCE(?, native_id), native_state = ?, "
            "native_info = ?, info = COALESCE(?, info), exit_code = COALESCE(?, exit_code), "
            "workflow_id = COALESCE(workflow_id, ?), name = COALESCE(name, ?), updated_at = ?, seq = ?, "
            "attempt = COALESCE(?, attempt), attempt_of = COALESCE(attempt_of, ?), retry_next = ? "
            "WHERE job_id = ?",
            (
                d.state.value, d.native_id, d.native_state, d.native_info, d.info, d.exit_code,
                d.workflow_id, d.name, t, seq, d.attempt, d.attempt_of, d.retry_next, d.job_id,
            ),
        )  # fmt: skip

    # ------------------------------------------------------------------ queries

    async def job(self, job_id: str) -> JobRecord | None:
        await self.catch_up()
        async with self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return _job(row) if row else None

    async def jobs(self, *, workflow_id: str | None = None, limit: int = 1000) -> list[JobRecord]:
        """``limit`` -1: no limit (SQLite's convention)."""
        await self.catch_up()
        if workflow_id is None:
            sql, args = "SELECT * FROM jobs ORDER BY created_at LIMIT ?", (limit,)
        else:
            sql = "SELECT * FROM jobs WHERE workflow_id = ? ORDER BY created_at, seq LIMIT ?"
            args = (workflow_id, limit)  # type: ignore[assignment]
        async with self.db.execute(sql, args) as cur:
            return [_job(r) for r in await cur.fetchall()]

    async def history(self, job_id: str) -> list[tuple[JobState, datetime]]:
        await self.catch_up()
        async with self.db.execute("SELECT state, time FROM job_history WHERE job_id = ? ORDER BY seq", (job_id,)) as c:
            return [(JobState(r[0]), datetime.fromisoformat(r[1])) for r in await c.fetchall()]

    async def trigger(self, trigger_id: str) -> TriggerRecord | None:
        await self.catch_up()
        async with self.db.execute("SELECT * FROM triggers WHERE trigger_id = ?", (trigger_id,)) as cur:
            row = await cur.fetchone()
        return _trigger(row) if row else None

    async def triggers(
        self, *, workflow_id: str | None = None, state: str | None = None, limit: int = 1000
    ) -> list[TriggerRecord]:
        await self.catch_up()
        sql, args = "SELECT * FROM triggers WHERE 1 = 1", list[object]()
        if workflow_id is not None:
            sql, args = sql + " AND workflow_id = ?", [*args, workflow_id]
        if state is not None:
            sql, args = sql + " AND state = ?", [*args, state]
        async with self.db.execute(sql + " ORDER BY registered_at LIMIT ?", (*args, limit)) as cur:
            return [_trigger(r) for r in await cur.fetchall()]

    async def triggers_starting(self, job_id: str) -> list[TriggerRecord]:
        """The triggers whose firing (or a join's expiry) would start the job ``job_id``."""
        await self.catch_up()
        sql = (
            "SELECT * FROM triggers WHERE json_extract(definition, '$.downstream.job_id') = ? "
            "OR json_extract(definition, '$.fallback.job_id') = ? ORDER BY registered_at"
        )
        async with self.db.execute(sql, (job_id, job_id)) as cur:
            return [_trigger(r) for r in await cur.fetchall()]

    async def find(self, query: DataQuery) -> DataPage:
        await self.catch_up()
        return await find(self.db, query)

    async def data_record(self, data_id: str) -> DataRecord | None:
        await self.catch_up()
        return await record_by_id(self.db, data_id)

    async def data_at(self, site: str, location: str) -> DataRecord | None:
        await self.catch_up()
        return await latest_at(self.db, site, location)

    async def workspace(self, name: str) -> WorkspaceRecord | None:
        await self.catch_up()
        return await workspace(self.db, name)

    async def workspaces(self) -> list[str]:
        await self.catch_up()
        return await workspace_names(self.db)

    async def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        await self.catch_up()
        async with self.db.execute("SELECT * FROM workflows WHERE workflow_id = ?", (workflow_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return WorkflowRecord(
            workflow_id=row["workflow_id"],
            name=row["name"],
            properties=json.loads(row["properties"]),
            created_at=datetime.fromisoformat(row["created_at"]),
        )

    # -- overviews: what ``lwfm-bus workflow ls`` and ``lwfm-bus status`` (no argument) show

    async def recent_workflows(
        self, limit: int = 20
    ) -> list[tuple[WorkflowRecord, dict[JobState, int], tuple[str, ...], datetime | None]]:
        """The most recently started workflows, newest first, each as ``(record, jobs per state, sites, ended)``.

        A workflow is known by its definition or by its jobs alone; it started when it was
        defined or with its first job, whichever came first (``record.created_at``).  ``ended``
        is when its last job ended, or None while one has not (or when it has no job).
        """
        await self.catch_up()
        sql = (
            "SELECT workflow_id, MIN(started) FROM ("
            "SELECT workflow_id, created_at AS started FROM workflows UNION ALL "
            "SELECT workflow_id, MIN(created_at) FROM jobs WHERE workflow_id IS NOT NULL GROUP BY workflow_id"
            ") GROUP BY workflow_id ORDER BY MIN(started) DESC, workflow_id LIMIT ?"
        )
        async with self.db.execute(sql, (limit,)) as cur:
            picked = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
        found: dict[str, tuple[str | None, dict[str, object]]] = {}
        counts: dict[str, dict[JobState, int]] = {w: {} for w, _ in picked}
        last_end: dict[str, str] = {}
        sites: dict[str, list[str]] = {w: [] for w, _ in picked}
        for i in range(0, len(picked), 500):
            chunk = [w for w, _ in picked[i : i + 500]]
            marks = ",".join("?" * len(chunk))
            where = f"WHERE workflow_id IN ({marks})"
            async with self.db.execute(f"SELECT workflow_id, name, properties FROM workflows {where}", chunk) as cur:  # noqa: S608
                for r in await cur.fetchall():
                    found[r[0]] = (r[1], json.loads(r[2]))
            sql = f"SELECT workflow_id, state, COUNT(*), MAX(updated_at) FROM jobs {where} GROUP BY workflow_id, state"  # noqa: S608
            async with self.db.execute(sql, chunk) as cur:
                for r in await cur.fetchall():
                    counts[r[0]][JobState(r[1])] = int(r[2])
                    last_end[r[0]] = max(last_end.get(r[0], ""), str(r[3]))
            sql = f"SELECT DISTINCT workflow_id, site FROM jobs {where} ORDER BY site"  # noqa: S608
            async with self.db.execute(sql, chunk) as cur:
                for r in await cur.fetchall():
                    sites[r[0]].append(str(r[1]))
        out: list[tuple[WorkflowRecord, dict[JobState, int], tuple[str, ...], datetime | None]] = []
        for workflow_id, started in picked:
            name, properties = found.get(workflow_id, (None, {}))
            record = WorkflowRecord(workflow_id, name, properties, datetime.fromisoformat(started))
            states = dict(sorted(counts[workflow_id].items(), key=lambda kv: (kv[0].rank, kv[0].value)))
            over = bool(states) and all(state.is_terminal for state in states)
            ended = datetime.fromisoformat(last_end[workflow_id]) if over else None
            out.append((record, states, tuple(sites[workflow_id]), ended))
        return out

    async def active_jobs(self, limit: int = 1000) -> list[JobRecord]:
        """Jobs that have not ended (READY, PENDING, RUNNING, INFO, FINISHING), by site, oldest first.

        ``limit`` -1: every one.
        """
        await self.catch_up()
        states = [s.value for s in JobState if not s.is_terminal]
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY site, created_at, seq LIMIT ?"  # noqa: S608
        async with self.db.execute(sql, (*states, limit)) as cur:
            return [_job(r) for r in await cur.fetchall()]

    async def active_counts(self) -> dict[str, dict[JobState, int]]:
        """How many jobs of each site are in each state that has not ended (sites in name order)."""
        await self.catch_up()
        states = [s.value for s in JobState if not s.is_terminal]
        marks = ",".join("?" * len(states))
        sql = f"SELECT site, state, COUNT(*) FROM jobs WHERE state IN ({marks}) GROUP BY site, state ORDER BY site"  # noqa: S608
        out: dict[str, dict[JobState, int]] = {}
        async with self.db.execute(sql, states) as cur:
            for r in await cur.fetchall():
                out.setdefault(str(r[0]), {})[JobState(r[1])] = int(r[2])
        return out


def _job(row: Sequence[object] | aiosqlite.Row) -> JobRecord:
    r = row  # sqlite3.Row supports access by name
    return JobRecord(
        job_id=r["job_id"],  # type: ignore[call-overload]
        site=r["site"],  # type: ignore[call-overload]
        workflow_id=r["workflow_id"],  # type: ignore[call-overload]
        name=r["name"],  # type: ignore[call-overload]
        state=JobState(r["state"]),  # type: ignore[call-overload]
        native_id=r["native_id"],  # type: ignore[call-overload]
        native_state=r["native_state"],  # type: ignore[call-overload]
        native_info=r["native_info"],  # type: ignore[call-overload]
        info=r["info"],  # type: ignore[call-overload]
        exit_code=r["exit_code"],  # type: ignore[call-overload]
        parent_ids=tuple(json.loads(r["parent_ids"])),  # type: ignore[call-overload]
        created_at=datetime.fromisoformat(r["created_at"]),  # type: ignore[call-overload]
        updated_at=datetime.fromisoformat(r["updated_at"]),  # type: ignore[call-overload]
        attempt=r["attempt"],  # type: ignore[call-overload]
        attempt_of=r["attempt_of"],  # type: ignore[call-overload]
        retry_next=r["retry_next"],  # type: ignore[call-overload]
    )


def _trigger(r: aiosqlite.Row) -> TriggerRecord:
    return TriggerRecord(
        trigger_id=r["trigger_id"],
        kind=r["kind"],
        name=r["name"],
        workflow_id=r["workflow_id"],
        state=r["state"],
        fired=r["fired"],
        last_job_id=r["last_job_id"],
        reason=r["reason"],
        definition=trigger_adapter().validate_json(r["definition"]),
        registered_at=datetime.fromisoformat(r["registered_at"]),
        updated_at=datetime.fromisoformat(r["updated_at"]),
    )
