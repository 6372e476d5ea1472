"""``lwfm-bus submit``: run one program on a site, optionally waiting for its end."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from .._client import connect
from .._config import BusConfig
from .._jobs import JobDefn, Resources
from .._retry import RetryPolicy
from ._print import credential_warnings, final_line


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a job: lwfm-bus submit [options] -- PROGRAM [ARGS...]")
    p.add_argument("--job-site", dest="job_site", default="local", help="site to run on (default: local)")
    p.add_argument("--workflow", help="workflow id to join")
    p.add_argument("--name", help="job name")
    p.add_argument(
        "--job-id", dest="job_id", help="the job's id (default: a new one); lets another site wire to it first"
    )
    p.add_argument("--shell", action="store_true", help="run one string through /bin/sh -c")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment")
    p.add_argument("--cwd", help="working directory")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its status")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument(
        "--time-limit", dest="time_limit_s", type=int, metavar="SECONDS",
        help="end the job after this long (SIGTERM, then SIGKILL): FAILED with native state TIMEOUT",
    )  # fmt: skip
    for flag, field, kind, what in _RESOURCES:
        p.add_argument(flag, dest=field, type=kind, help=f"resource hint: {what}")
    p.add_argument(
        "--retry", dest="max_attempts", type=int, metavar="ATTEMPTS",
        help="run a FAILED job again, up to this many attempts in all (each attempt is its own job)",
    )  # fmt: skip
    p.add_argument(
        "--retry-when", dest="retry_when", metavar="EXPR",
        help="with --retry: only when this holds, e.g. \"native_state == 'TIMEOUT' or exit_code == 75\" "
        "(names: state, native_state, exit_code, attempt)",
    )  # fmt: skip
    p.add_argument("--retry-backoff", dest="backoff_s", type=float, metavar="SECONDS",
                   help="with --retry: wait before the second attempt (doubling after; default 1)")  # fmt: skip
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    p.set_defaults(func=submit)


# Resource hints a site maps if it understands them (Slurm: sbatch options); see Resources.
_RESOURCES: tuple[tuple[str, str, type, str], ...] = (
    ("--nodes", "nodes", int, "nodes (Slurm --nodes)"),
    ("--tasks", "tasks", int, "tasks (Slurm --ntasks)"),
    ("--cpus-per-task", "cpus_per_task", int, "CPUs per task"),
    ("--memory-mb", "memory_mb", int, "memory in MiB (Slurm --mem)"),
    ("--gpus", "gpus", int, "GPUs"),
    ("--partition", "partition", str, "Slurm partition"),
    ("--account", "account", str, "Slurm account"),
)


def _resources(args: argparse.Namespace) -> Resources:
    given = {f: getattr(args, f) for f in ("time_limit_s", *(r[1] for r in _RESOURCES)) if getattr(args, f) is not None}
    try:
        return Resources.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_s", "").replace("_", "-") if error["loc"] else "a resource"
        print(f"lwfm-bus submit: error: {flag}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _retry(args: argparse.Namespace) -> RetryPolicy | None:
    given = {"when": args.retry_when, "backoff_s": args.backoff_s}
    if args.max_attempts is None:
        if any(v is not None for v in given.values()):
            print("lwfm-bus submit: error: --retry-when and --retry-backoff go with --retry ATTEMPTS", file=sys.stderr)
            raise SystemExit(2)
        return None
    try:
        return RetryPolicy.model_validate(
            {"max_attempts": args.max_attempts, **{k: v for k, v in given.items() if v is not None}}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = {"max_attempts": "--retry", "when": "--retry-when", "backoff_s": "--retry-backoff"}.get(
            str(error["loc"][0]) if error["loc"] else "", "--retry"
        )
        message = str(error["msg"]).removeprefix("Value error, ")
        print(f"lwfm-bus submit: error: {flag}: {message}", file=sys.stderr)
        raise SystemExit(2) from None


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
    resources, retry = _resources(args), _retry(args)
    if args.shell:
        return JobDefn(shell=" ".join(command), name=args.name, env=env, cwd=args.cwd, resources=resources, retry=retry)
    return JobDefn(argv=tuple(command), name=args.name, env=env, cwd=args.cwd, resources=resources, retry=retry)


async def submit(args: argparse.Namespace, config: BusConfig) -> int:
    defn = _defn(args)
    for warning in credential_warnings("--env ", defn.env):
        print(warning, file=sys.stderr)
    async with connect(config, name="lwfm-bus submit") as bus:
        job = await bus.submit(defn, site=args.job_site, workflow=args.workflow, job_id=args.job_id)
        print(job.job_id, flush=True)
        if not args.wait:
            return 0
        final = await job.wait(timeout=args.timeout)
        print(final_line(final))
        return 0 if final.state.is_success else 1
