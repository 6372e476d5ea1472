"""``lwfm-bus workflow show``: a workflow's jobs with their states, the data they made, its triggers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._errors import UnknownJobError
from ._print import data_json, job_json, shown

__all__ = ["register"]


def register(sub: Any) -> None:
    wf = sub.add_parser("workflow", help="a workflow's jobs, data and triggers")
    wfsub = wf.add_subparsers(dest="workflow_command", required=True, metavar="ACTION")
    show = wfsub.add_parser("show", help="jobs with their states, the data they made, the triggers")
    show.add_argument("workflow_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_workflow)


async def show_workflow(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus workflow") as bus:
        record = await bus.workflow(args.workflow_id)
        jobs = await bus.jobs(workflow=args.workflow_id)
        if record is None and not jobs:
            raise UnknownJobError(f"no workflow {args.workflow_id!r} is known to this bus")
        data = (await bus.find(workflow_id=args.workflow_id, limit=10_000)).records
        triggers = await bus.triggers(workflow=args.workflow_id)
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
    print("data:")
    for d in data:
        print(f"  {shown(d.data_id):<32}  {shown(d.site)}:{shown(d.location)}  from {shown(d.job_id or '-')}")
    print("triggers:")
    for t in triggers:
        print(f"  {shown(t.trigger_id):<32}  {shown(t.kind):<11} {shown(t.state):<9} fired {t.fired}")
    return 0
