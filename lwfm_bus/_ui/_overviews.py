"""The bus-wide pages' JSON documents: triggers, data (find and provenance), sites, dead letters.

Like :mod:`._views`, data for the page and never markup; and nothing of the bus's own
configuration.  Where a record holds more than the page needs and some of it may be a user's
secret (a trigger's downstream job environment, a site's options), only what is shown is sent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .._bus._eventbus import STREAM
from .._bus._fedkeeper import source_states
from .._client import Bus
from .._events import SiteHeartbeatEvent, SiteStatus
from .._index._projection import JobIndex, TriggerRecord
from .._query import DataQuery, DataRecord
from .._subjects import ROOT
from .._triggers import DataTrigger, JobTrigger, JoinTrigger
from ._views import job_json, time_of

__all__ = ["data_doc", "dead_letters_doc", "find_doc", "sites_doc", "triggers_doc"]


async def _progress(index: JobIndex, t: JobTrigger | JoinTrigger) -> dict[str, Any]:
    """How far a waiting trigger is: upstreams satisfied of those required, and a join's window."""
    satisfied, opened = 0, None
    for up in t.all_upstreams():
        history = await index.history(up.job_id)
        times = [when for state, when in history if up.satisfied_by(state)]
        if times:
            satisfied += 1
            opened = min(opened, times[0]) if opened is not None else times[0]
    within = t.within_s if isinstance(t, JoinTrigger) else None
    return {
        "satisfied": satisfied,
        "required": t.required(),
        "upstreams": [{"job_id": up.job_id, "states": [s.value for s in up.states]} for up in t.all_upstreams()],
        "mode": t.mode if isinstance(t, JoinTrigger) else "one",
        "within_s": within,
        "window_opened_at": time_of(opened) if within is not None else None,
        "deadline": time_of(opened + timedelta(seconds=within)) if within is not None and opened is not None else None,
    }


async def _trigger_json(index: JobIndex, r: TriggerRecord) -> dict[str, Any]:
    t = r.definition
    doc: dict[str, Any] = {
        "trigger_id": r.trigger_id,
        "kind": r.kind,
        "name": r.name,
        "workflow_id": r.workflow_id,
        "state": r.state,
        "fired": r.fired,
        "last_job_id": r.last_job_id,
        "reason": r.reason,
        "registered_at": time_of(r.registered_at),
        "updated_at": time_of(r.updated_at),
        # What it starts, by name: not the job's definition, whose environment may hold a user's secrets.
        "downstream": {"label": t.downstream.job.label(), "site": t.downstream.site, "job_id": t.downstream.job_id},
        "progress": None,
        "signature": None,
    }
    if isinstance(t, JobTrigger | JoinTrigger) and r.state == "active":
        doc["progress"] = await _progress(index, t)
    if isinstance(t, DataTrigger):
        doc["signature"] = {key: p.model_dump(mode="json") for key, p in t.signature.items()}
    return doc


async def triggers_doc(bus: Bus, workflow_id: str | None = None, limit: int = 1000) -> dict[str, Any]:
    """Registered triggers, oldest first, with the progress of those still waiting."""
    index = await bus.index()
    records = await index.triggers(workflow_id=workflow_id, limit=limit)
    return {"triggers": [await _trigger_json(index, r) for r in records]}


DEAD_LETTER_EXAMPLES = 10  # the latest parked messages shown per reason
_PREVIEW_BYTES = 512


async def dead_letters_doc(bus: Bus) -> dict[str, Any]:
    """Parked messages counted by reason, with the latest few of each (their bytes as text, cut short)."""
    counts: dict[str, int] = {}
    latest: dict[str, list[dict[str, Any]]] = {}
    async for d in bus.dead_letters():
        counts[d.reason] = counts.get(d.reason, 0) + 1
        examples = latest.setdefault(d.reason, [])
        examples.append(
            {
                "seq": d.seq,
                "subject": d.subject,
                "error": d.error,
                "data": d.data[:_PREVIEW_BYTES].decode("utf-8", errors="replace"),
                "size": len(d.data),
            }
        )
        del examples[:-DEAD_LETTER_EXAMPLES]
    return {
        "reasons": [
            {"reason": reason, "count": n, "latest": latest[reason][::-1]}
            for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
    }


def data_json(r: DataRecord) -> dict[str, Any]:
    return {
        "data_id": r.data_id,
        "site": r.site,
        "location": r.location,
        "metadata": r.metadata,
        "time": time_of(r.time),
        "size": r.size,
        "checksum": r.checksum,
        "job_id": r.job_id,
        "workflow_id": r.workflow_id,
    }


async def find_doc(bus: Bus, query_json: str) -> dict[str, Any]:
    """One page of ``find``: ``query_json`` is a :class:`DataQuery` as JSON (ValueError if it is not one)."""
    query = DataQuery.model_validate_json(query_json)
    page = await bus.find(query)
    return {"records": [data_json(r) for r in page.records], "next_offset": page.next_offset}


async def data_doc(bus: Bus, data_id: str) -> dict[str, Any]:
    """One data record and its provenance: the job that made it and that job's upstream chain."""
    p = await bus.provenance(data_id)
    return {
        "record": data_json(p.data),
        "job": job_json(p.job) if p.job is not None else None,
        "ancestors": [job_json(a) for a in p.ancestors],
    }


def _health_json(event: SiteHeartbeatEvent | None) -> dict[str, Any]:
    """A site's health: ``ok`` unless its last heartbeat said otherwise (an agent publishes only changes,
    so none means no trouble was ever reported); the heartbeat's time is when that health began."""
    if event is None:
        return {"status": "ok", "since": None, "info": None, "adapter": None}
    d = event.data
    status = "ok" if d.status is SiteStatus.UP else d.status.value
    return {"status": status, "since": time_of(event.time), "info": d.info, "adapter": d.adapter}


_MAX_SITES = 200  # rows of the federation pane
_LATEST_JOBS = 5  # a site's latest jobs shown in it


async def _jobs_by_site(bus: Bus) -> tuple[dict[str, dict[str, int]], dict[str, list[dict[str, Any]]]]:
    """Every site's jobs by state (ended ones too) and its latest few, from the index (every event this
    bus's stream holds: its own sites' and, at a federation member, those it sources)."""
    index = await bus.index()
    await index.catch_up()
    counts: dict[str, dict[str, int]] = {}
    sql = "SELECT site, state, COUNT(*) FROM jobs GROUP BY site, state ORDER BY site"
    async with index.db.execute(sql) as cur:
        for site, state, n in await cur.fetchall():
            if len(counts) < _MAX_SITES or site in counts:
                counts.setdefault(str(site), {})[str(state)] = int(n)
    latest: dict[str, list[dict[str, Any]]] = {}
    sql = "SELECT job_id, name, state, workflow_id, updated_at FROM jobs WHERE site = ? "
    sql += "ORDER BY updated_at DESC LIMIT ?"
    for site in counts:
        async with index.db.execute(sql, (site, _LATEST_JOBS)) as cur:
            latest[site] = [
                {"job_id": r[0], "name": r[1], "state": r[2], "workflow_id": r[3], "updated_at": r[4]}
                for r in await cur.fetchall()
            ]
    return counts, latest


async def _federation_json(bus: Bus, names: list[str]) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """This bus's place in its federation (None: it stands alone), and per site name: its member, that
    member's role, and where its events come from (this bus's own, or a source of this stream, with its lag)."""
    member = bus.federation
    if member is None:
        return None, {name: {"member": None, "role": None, "events": {"from": "here"}} for name in names}
    fed = member.federation
    _, states = await source_states(bus)
    owner = {spoken: name for name in fed.sites for spoken in fed.names_of(name)}
    rows: dict[str, dict[str, Any]] = {}
    for name in sorted(set(names) | set(owner)):
        who = owner.get(name)
        role = None if who is None else "hub" if fed.sites[who].hub else "leaf"
        if who == member.site:
            events: dict[str, Any] = {"from": "here"}
        else:
            src = next((s for s in states if s.site == who and s.filter == f"{ROOT}.{name}.>"), None)
            events = {"from": "nowhere"} if src is None else {
                "from": "sourced", "stream": src.site, "lag": src.lag, "active_s": src.active_s, "error": src.error,
            }  # fmt: skip
        rows[name] = {"member": who, "role": role, "events": events}
    doc = {"site": member.site, "hub": fed.hub, "is_hub": member.is_hub, "members": sorted(fed.sites)}
    return doc, rows


async def sites_doc(bus: Bus) -> dict[str, Any]:
    """Every site: configured (name and adapter only: options may hold hosts and keys), its unfinished
    jobs by state (the queue), its health; the lag of each stream this bus sources; and the federation
    pane: every site this bus's stream holds events of, with its jobs and where its events come from."""
    specs = bus.site_specs()
    counts = await (await bus.index()).active_counts()
    health = await bus.site_health()
    stream = await bus.jetstream.stream_info(STREAM)
    sites = []
    for name in sorted(set(specs) | set(counts) | set(health)):
        spec = specs.get(name)
        sites.append(
            {
                "site": name,
                "adapter": spec.adapter if spec is not None else None,
                "broken": spec.broken if spec is not None else None,
                "configured": spec is not None,
                "jobs": {state.value: n for state, n in counts.get(name, {}).items()},
                "health": _health_json(health.get(name)),
            }
        )
    sources = [
        {"name": s.name, "lag": s.lag, "active_ms": (s.active or 0) / 1e6 if s.active is not None else None}
        for s in stream.sources or []
    ]
    all_jobs, latest = await _jobs_by_site(bus)
    # At a federation member, its members and every site its stream holds events of; alone, its own sites too.
    own = set(specs) if bus.federation is None else set()
    federation, placed = await _federation_json(bus, sorted(set(all_jobs) | set(health) | own))
    pane = [
        {
            "site": name,
            **place,
            "jobs": all_jobs.get(name, {}),
            "latest": latest.get(name, []),
            "health": _health_json(health.get(name)),
        }
        for name, place in sorted(placed.items())[:_MAX_SITES]
    ]
    return {
        "sites": sites,
        "sources": sources,
        "federation": federation,
        "pane": pane,
        "seq": int(stream.state.last_seq),
    }
