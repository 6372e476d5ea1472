"""``lwfm-bus status``: one job's record, every job of a workflow, or -- with neither -- what is
pending and running now, per site; as table rows or JSON (one object per job and line).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._index._projection import JobRecord
from .._states import JobState
from ._print import health_note, shown

_RUNNING = (JobState.RUNNING, JobState.INFO, JobState.FINISHING)  # INFO: a running job that said something
_PENDING = (JobState.READY, JobState.PENDING)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="a job's status, every job of a workflow, or (with neither) what is pending and running, per site",
    )
    p.add_argument("job", nargs="?", help="job id")
    p.add_argument("--workflow", help="list the jobs of this workflow")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--limit", type=int, default=50, metavar="N",
        help="without a job or workflow: list at most N of the unfinished jobs (default 50; the counts are all)",
    )  # fmt: skip
    p.set_defaults(func=status)


def _row(r: JobRecord) -> str:
    code = "" if r.exit_code is None else str(r.exit_code)
    row = f"{shown(r.job_id)}  {r.state.value:<9} {code:>4}  {shown(r.site):<10} {shown(r.name or '')}"
    if r.state is JobState.PENDING and r.native_state:
        row += f"  ({shown(r.native_state)})"  # why it waits: queued, or no agent serves the site
    if r.attempt > 1:
        row += f"  (attempt {r.attempt} of {shown(r.logical_id)})"
    if r.retry_next is not None:
        row += f"  (retried as {shown(r.retry_next)})"
    return row


def _json(r: JobRecord) -> str:
    d = {k: getattr(r, k) for k in r.__dataclass_fields__}
    d["state"] = r.state.value
    d["created_at"] = r.created_at.isoformat()
    d["updated_at"] = r.updated_at.isoformat()
    d["parent_ids"] = list(r.parent_ids)
    return json.dumps(d)


def _counts(states: dict[JobState, int]) -> str:
    running = sum(states.get(s, 0) for s in _RUNNING)
    pending = sum(states.get(s, 0) for s in _PENDING)
    return ", ".join(f"{n} {word}" for n, word in ((running, "running"), (pending, "pending")) if n)


async def _overview(args: argparse.Namespace, config: BusConfig) -> int:
    """What is pending and running now, per site: a count line per site, then its jobs, oldest first."""
    async with connect(config, name="lwfm-bus status") as bus:
        index = await bus.index()
        counts = await index.active_counts()
        records = await index.active_jobs(limit=max(args.limit, 0))
        health = await bus.site_health()
    if args.json:
        for r in records:
            print(_json(r))
        return 0
    if not counts:
        print("nothing is pending or running")
    for site, states in counts.items():
        note = health_note(health.get(site))
        print(f"{shown(site)}: {_counts(states)}" + (f"  [site {note}]" if note else ""))
        for r in records:
            if r.site == site:
                print(f"  {_row(r)}")
    for site in sorted(set(health) - set(counts)):  # a site in trouble says so, busy or not
        note = health_note(health[site])
        if note:
            print(f"{shown(site)}: site {note}")
    hidden = sum(n for states in counts.values() for n in states.values()) - len(records)
    if hidden > 0:
        print(f"... and {hidden} more (--limit N shows more)")
    return 0


async def status(args: argparse.Namespace, config: BusConfig) -> int:
    if args.job and args.workflow:
        print("lwfm-bus status: give a job id or --workflow W, not both", file=sys.stderr)
        return 2
    if not args.job and not args.workflow:
        return await _overview(args, config)
    async with connect(config, name="lwfm-bus status") as bus:
        records = [await bus.status(args.job)] if args.job else await bus.jobs(workflow=args.workflow)
        health = await bus.site_health() if any(not r.state.is_terminal for r in records) else {}
    for r in records:
        note = None if r.state.is_terminal else health_note(health.get(r.site))
        print(_json(r) if args.json else _row(r) + (f"  [site {note}]" if note else ""))
    return 0
