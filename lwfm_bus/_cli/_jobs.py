"""``lwfm-bus submit | status | cancel | logs``: jobs from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._index._projection import JobRecord
from .._jobs import JobDefn
from .._states import JobState


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a job: lwfm-bus submit [options] -- PROGRAM [ARGS...]")
    p.add_argument("--job-site", dest="job_site", default="local", help="site to run on (default: local)")
    p.add_argument("--workflow", help="workflow id to join")
    p.add_argument("--name", help="job name")
    p.add_argument("--shell", action="store_true", help="run one string through /bin/sh -c")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment")
    p.add_argument("--cwd", help="working directory")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its status")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    p.set_defaults(func=submit)

    p = sub.add_parser("status", help="a job's status, or every job of a workflow")
    p.add_argument("job", nargs="?", help="job id")
    p.add_argument("--workflow", help="list the jobs of this workflow")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=status)

    p = sub.add_parser("cancel", help="cancel a job and everything it started")
    p.add_argument("job", help="job id")
    p.set_defaults(func=cancel)

    p = sub.add_parser("logs", help="print what a job wrote")
    p.add_argument("job", help="job id")
    p.add_argument("--stderr", action="store_true", help="standard error instead of standard output")
    p.set_defaults(func=logs)


def _defn(args: argparse.Namespace) -> JobDefn:
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else list(args.command)
    if not command:
        raise SystemExit("lwfm-bus submit: give the command after --, e.g. lwfm-bus submit -- echo hi")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"lwfm-bus submit: --env {item!r} is not KEY=VALUE")
        env[key] = value
    if args.shell:
        return JobDefn(shell=" ".join(command), name=args.name, env=env, cwd=args.cwd)
    return JobDefn(argv=tuple(command), name=args.name, env=env, cwd=args.cwd)


async def submit(args: argparse.Namespace, config: BusConfig) -> int:
    defn = _defn(args)
    async with connect(config, name="lwfm-bus submit") as bus:
        job = await bus.submit(defn, site=args.job_site, workflow=args.workflow)
        print(job.job_id, flush=True)
        if not args.wait:
            return 0
        final = await job.wait(timeout=args.timeout)
        print(f"{final.state.value}" + (f" exit={final.exit_code}" if final.exit_code is not None else ""))
        return 0 if final.state.is_success else 1


def _row(r: JobRecord) -> str:
    code = "" if r.exit_code is None else str(r.exit_code)
    row = f"{r.job_id}  {r.state.value:<9} {code:>4}  {r.site:<10} {r.name or ''}"
    if r.state is JobState.PENDING and r.native_state:
        row += f"  ({r.native_state})"  # why it waits: queued, or no agent serves the site
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


async def cancel(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus cancel") as bus:
        await bus.cancel(args.job)
    return 0


async def logs(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus logs") as bus:
        data = await bus.logs(args.job, "stderr" if args.stderr else "stdout")
    sys.stdout.buffer.write(data)
    return 0
