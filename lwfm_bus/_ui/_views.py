"""The dashboard's JSON documents, built from the index and the stream.

Every value here is data for the page, never markup: the page renders it as text.  The one
exception is the metro map, an SVG document made by :func:`lwfm_bus._pipeline.to_svg`, which
escapes every name it writes.  Nothing here carries the bus's configuration: the browser
never learns where the bus is or how to log in to it.

A document that the page keeps up to date also says the stream sequence it is good up to
(``seq``), so the page asks the event stream for what came after.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .._bus._eventbus import STREAM
from .._client import Bus
from .._errors import LwfmBusError
from .._events import JobStatusEvent
from .._index._projection import JobRecord
from .._pipeline import MetroMap, load_pipeline, metro_map, status_from_jobs, step_path_of, to_svg
from .._subjects import job_filter, workflow_filter

__all__ = [
    "MapCache",
    "job_doc",
    "job_json",
    "log_tail",
    "stream_seq",
    "time_of",
    "workflow_doc",
    "workflows_doc",
]

log = logging.getLogger("lwfm_bus.ui")

LOG_TAIL_BYTES = 64 * 1024
_MAX_HISTORY = 10_000


def time_of(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def job_json(r: JobRecord, station: str | None = None) -> dict[str, Any]:
    """A job record for the page; ``station``: the metro-map step it ran for, if any."""
    return {
        "job_id": r.job_id,
        "name": r.name,
        "site": r.site,
        "workflow_id": r.workflow_id,
        "state": r.state.value,
        "native_state": r.native_state,
        "native_info": r.native_info,
        "info": r.info,
        "exit_code": r.exit_code,
        "parent_ids": list(r.parent_ids),
        "created_at": time_of(r.created_at),
        "updated_at": time_of(r.updated_at),
        "station": station,
    }


async def stream_seq(bus: Bus) -> int:
    """The stream's last sequence now: a document read after it is at least this new."""
    info = await bus.jetstream.stream_info(STREAM)
    return int(info.state.last_seq)


async def workflows_doc(bus: Bus, limit: int = 500) -> dict[str, Any]:
    """The most recent workflows, newest first: jobs per state, sites, start and end."""
    index = await bus.index()
    rows = await index.recent_workflows(limit)
    return {
        "workflows": [
            {
                "workflow_id": record.workflow_id,
                "name": record.name,
                "states": {state.value: n for state, n in states.items()},
                "jobs": sum(states.values()),
                "sites": list(sites),
                "started_at": time_of(record.created_at),
                "ended_at": time_of(ended),
            }
            for record, states, sites, ended in rows
        ]
    }


@dataclass(frozen=True)
class _Drawn:
    metro: MetroMap
    mtime: float


class MapCache:
    """Metro maps of pipeline files, each kept while its file is unchanged (one per dashboard)."""

    def __init__(self) -> None:
        self._maps: dict[str, _Drawn] = {}

    def metro_of(self, path_text: str) -> tuple[MetroMap | None, str | None]:
        """The metro map of a pipeline file, or why there is none.

        The reason never quotes the file: its path came from an event on the bus, and the page
        must not become a way to read files on this machine.  Only a regular file is read (a
        FIFO or a device named by a hostile event would block or never end).
        """
        path = Path(path_text)
        try:
            st = path.stat()
        except OSError:
            return None, "the pipeline file of this run is not readable here"
        if not stat.S_ISREG(st.st_mode):
            return None, "the pipeline file of this run is not a regular file"
        cached = self._maps.get(path_text)
        if cached is not None and cached.mtime == st.st_mtime:
            return cached.metro, None
        try:
            metro = metro_map(load_pipeline(path))
        except (LwfmBusError, OSError, ValueError) as exc:
            log.info("no metro map for %s: %s", path_text, exc)
            return None, "the pipeline file of this run no longer loads"
        self._maps[path_text] = _Drawn(metro, st.st_mtime)
        return metro, None


def _stations(m: MetroMap) -> list[dict[str, Any]]:
    """Every station of the map, nested ones after their frame, with what the page needs to recount it."""
    return [
        {
            "path": s.path,
            "runs": s.runs,
            "children": [inner.path for inner in s.submap.stations] if s.submap is not None else None,
        }
        for s in m.walk()
    ]


async def workflow_doc(bus: Bus, workflow_id: str, maps: MapCache) -> dict[str, Any] | None:
    """One workflow: its record, its jobs, and (for a pipeline run) the metro map with live status."""
    seq = await stream_seq(bus)
    record = await bus.workflow(workflow_id)
    jobs = await bus.jobs(workflow=workflow_id, limit=None)
    if record is None and not jobs:
        return None
    metro, note = None, None
    pipeline = record.properties.get("pipeline") if record is not None else None
    if isinstance(pipeline, str) and pipeline:
        metro, note = maps.metro_of(pipeline)
    elif record is not None:
        note = "this workflow is not a pipeline run: it has no metro map"
    doc: dict[str, Any] = {
        "seq": seq,
        "subject": workflow_filter(workflow_id),
        "workflow": {
            "workflow_id": workflow_id,
            "name": record.name if record is not None else None,
            "properties": record.properties if record is not None else {},
            "created_at": time_of(record.created_at) if record is not None else None,
        },
        "map": None,
        "map_note": note,
    }
    if metro is not None:
        status = status_from_jobs(metro, ((r.name, r.state) for r in jobs))  # each step's latest attempt
        doc["map"] = {"pipeline": metro.name, "svg": to_svg(metro, status), "stations": _stations(metro)}
        doc["jobs"] = [job_json(r, step_path_of(r.name, metro.name)) for r in jobs]
    else:
        doc["jobs"] = [job_json(r) for r in jobs]
    return doc


async def job_doc(bus: Bus, job_id: str) -> dict[str, Any] | None:
    """One job: its record, every state it reported (with the site's own word), parents and children."""
    index = await bus.index()
    record = await index.job(job_id)
    if record is None:
        return None
    history: list[dict[str, Any]] = []
    seq = 0
    async with bus.replay(job_filter(job_id)) as events:
        async for event in events:
            seq = events.last_seq
            if isinstance(event, JobStatusEvent) and len(history) < _MAX_HISTORY:
                d = event.data
                history.append(
                    {
                        "seq": seq,
                        "time": time_of(event.time),
                        "state": d.state.value,
                        "native_state": d.native_state,
                        "native_info": d.native_info,
                        "info": d.info,
                        "exit_code": d.exit_code,
                    }
                )
    parents = [p for p in [await index.job(pid) for pid in record.parent_ids] if p is not None]
    siblings = await index.jobs(workflow_id=record.workflow_id, limit=-1) if record.workflow_id else []
    children = [r for r in siblings if job_id in r.parent_ids]
    return {
        "seq": seq,
        "subject": job_filter(job_id),
        "job": job_json(record),
        "history": history,
        "parents": [job_json(p) for p in parents],
        "children": [job_json(c) for c in children],
    }


async def log_tail(bus: Bus, job_id: str, stream: str) -> str:
    """The last :data:`LOG_TAIL_BYTES` of a job's stdout or stderr, as text (undecodable bytes replaced)."""
    data = await bus.logs(job_id, "stderr" if stream == "stderr" else "stdout")
    tail = data[-LOG_TAIL_BYTES:]
    return tail.decode(errors="replace")
