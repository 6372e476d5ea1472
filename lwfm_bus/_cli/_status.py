"""``lwfm-bus status``: one job's record, or every job of a workflow, as a table row or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._index._projection import JobRecord
from .._states import JobState
from ._print import shown


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="a job's status, or every job of a workflow")
    p.add_argument("job", nargs="?", help="job id")
    p.add_argument("--workflow", help="list the jobs of this workflow")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=status)


def _row(r: JobRecord) -> str:
    code = "" if r.exit_code is None else str(r.exit_code)
    row = f"{shown(r.job_id)}  {r.state.value:<9} {code:>4}  {shown(r.site):<10} {shown(r.name or '')}"
    if r.state is JobState.PENDING and r.native_state:
        row += f"  ({shown(r.native_state)})"  # why it waits: queued, or no agent serves the site
    return row


def _json(r: JobRecord) -> str:
    d = {k: getattr(r, k) for k in r.__dataclass_fields__}
    d["state"] = r.state.value
    d["created_at"] = r.created_at.isoformat()
    d["updated_at"] = r.updated_at.isoformat()
    d["parent_ids"] = list(r.parent_ids)
    return json.dumps(d)


async def status(args: argparse.Namespace, config: BusConfig) -> int:
    if bool(args.job) == bool(args.workflow):
        print("lwfm-bus status: give a job id or --workflow W", file=sys.stderr)
        return 2
    async with connect(config, name="lwfm-bus status") as bus:
        records = [await bus.status(args.job)] if args.job else await bus.jobs(workflow=args.workflow)
    for r in records:
        print(_json(r) if args.json else _row(r))
    return 0
