"""``lwfm-bus workflow show | ls | cancel``: one workflow's jobs, data and triggers; the recent ones; stopping one."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._errors import UnknownJobError
from .._index._projection import WorkflowRecord
from .._states import JobState
from ._print import data_json, health_note, job_json, shown

__all__ = ["register"]


def register(sub: Any) -> None:
    wf = sub.add_parser("workflow", help="a workflow's jobs, data and triggers")
    wfsub = wf.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    show = wfsub.add_parser("show", help="jobs with their states, the data they made, the triggers")
    show.add_argument("workflow_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_workflow)
    ls = wfsub.add_parser(
        "ls",
        help="recent workflows, newest first: jobs per state, sites, when they started and ended",
        description="The most recently started workflows, newest first: how many of their jobs are in each state, "
        "the sites they ran on, when they started and when their last job ended ('-' while one has not).",
    )
    ls.add_argument("--limit", type=_positive, default=20, metavar="N", help="at most N workflows (default 20)")
    ls.add_argument("--json", action="store_true", help="one JSON object per workflow and line")
    ls.set_defaults(func=list_workflows)
    cancel = wfsub.add_parser(
        "cancel",
        help="stop a run: withdraw its triggers, cancel its jobs on every site, wait until nothing is active",
        description="Stop a whole workflow in one call: withdraw every active trigger of W, cancel its pending and "
        "running jobs on every site, then wait until nothing of W is active, and say what was stopped. "
        "Exit 0 when nothing is left active, 1 when something still is after --timeout.",
    )
    cancel.add_argument("workflow_id")
    cancel.add_argument("--reason", help="why (kept in each withdrawn trigger's event)")
    cancel.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for quiet (default 60)")
    cancel.set_defaults(func=cancel_workflow)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100000, not {text!r}")
    return value


async def show_workflow(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workflow") as bus:
        record = await bus.workflow(args.workflow_id)
        jobs = await bus.jobs(workflow=args.workflow_id)
        if record is None and not jobs:
            raise UnknownJobError(f"no workflow {args.workflow_id!r} is known to this bus")
        data = (await bus.find(workflow_id=args.workflow_id, limit=10_000)).records
        triggers = await bus.triggers(workflow=args.workflow_id)
        health = await bus.site_health()
    if args.json:
        doc = {
            "workflow_id": args.workflow_id,
            "name": record.name if record else None,
            "properties": record.properties if record else {},
            "jobs": [job_json(j) for j in jobs],
            "data": [data_json(d) for d in data],
            "triggers": [
                {"trigger_id": t.trigger_id, "kind": t.kind, "state": t.state, "fired": t.fired} for t in triggers
            ],
            "sites": {  # the health of each site its jobs ran on, as its agents last said it
                site: {"status": beat.data.status.value, "since": beat.time.isoformat(), "info": beat.data.info}
                for site, beat in sorted(health.items())
                if site in {j.site for j in jobs}
            },
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"workflow {shown(args.workflow_id)}" + (f"  {shown(record.name)}" if record and record.name else ""))
    print("jobs:")
    for j in jobs:
        parents = shown(",".join(j.parent_ids) or "-")
        print(
            f"  {shown(j.job_id):<32}  {j.state.value:<9} {shown(j.site):<10} parents {parents}  {shown(j.name or '')}"
        )
    troubled = {j.site: health_note(health.get(j.site)) for j in jobs if not j.state.is_terminal}
    for site, note in sorted((site, note) for site, note in troubled.items() if note):
        print(f"  site {shown(site)}: {note}")  # why its jobs wait
    print("data:")
    for d in data:
        print(f"  {shown(d.data_id):<32}  {shown(d.site)}:{shown(d.location)}  from {shown(d.job_id or '-')}")
    print("triggers:")
    for t in triggers:
        print(f"  {shown(t.trigger_id):<32}  {shown(t.kind):<11} {shown(t.state):<9} fired {t.fired}")
    return 0


Overview = tuple[WorkflowRecord, dict[JobState, int], tuple[str, ...], datetime | None]


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _overview_json(row: Overview) -> str:
    record, states, sites, ended = row
    doc = {
        "workflow_id": record.workflow_id,
        "name": record.name,
        "started_at": record.created_at.isoformat(),
        "ended_at": ended.isoformat() if ended else None,
        "jobs": sum(states.values()),
        "states": {state.value: n for state, n in states.items()},
        "sites": list(sites),
        "properties": record.properties,
    }
    return json.dumps(doc)


async def list_workflows(args: argparse.Namespace, config: BusConfig) -> int:
    # Reading the index needs no trigger engine; starting one would make this a writer too.
    async with connect(config.model_copy(update={"engine": "off"}), name="lwfm-bus workflow") as bus:
        rows = await (await bus.index()).recent_workflows(args.limit)
    if args.json:
        for row in rows:
            print(_overview_json(row))
        return 0
    if not rows:
        print("no workflows yet", file=sys.stderr)
        return 0
    print(f"{'WORKFLOW':<32}  {'STARTED':<19}  {'ENDED':<19}  {'JOBS':>4}  {'STATES':<28}  {'SITES':<12}  NAME")
    for record, states, sites, ended in rows:
        counts = ", ".join(f"{state.value} {n}" for state, n in states.items()) or "-"
        print(
            f"{shown(record.workflow_id):<32}  {_when(record.created_at):<19}  {_when(ended):<19}  "
            f"{sum(states.values()):>4}  {counts:<28}  {shown(','.join(sites)) or '-':<12}  {shown(record.name or '')}"
        )
    return 0


async def cancel_workflow(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workflow cancel") as bus:
        known = (
            await bus.workflow(args.workflow_id) is not None
            or bool(await bus.jobs(workflow=args.workflow_id, limit=1))
            or bool(await bus.triggers(workflow=args.workflow_id))
        )
        if not known:
            raise UnknownJobError(f"no workflow {args.workflow_id!r} is known to this bus")
        stop = await bus.cancel_workflow(args.workflow_id, reason=args.reason, wait_s=args.timeout)
    name = shown(args.workflow_id)
    print(
        f"workflow {name}: {len(stop.triggers_withdrawn)} trigger(s) withdrawn, "
        f"{len(stop.jobs_cancelled)} job(s) cancelled"
    )
    for job_id in stop.jobs_cancelled:
        print(f"  cancelled {shown(job_id)}")
    if stop.still_active:
        print(f"still active after {args.timeout:g}s: {' '.join(shown(x) for x in stop.still_active)}", file=sys.stderr)
        return 1
    return 0
