"""``lwfm-bus logs``: the bytes a job wrote to standard output or standard error, unchanged.

A job that has not started yet (READY or PENDING) has no log: that is one line on stderr
and exit code 1, rather than empty output that looks like a job that printed nothing
(and rather than asking its site, which may be out of reach until an agent takes it).
A retried job's log is its attempt's own; the next attempt is named after it, on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._states import JobState
from ._print import shown

_NOT_STARTED = 1  # like a missing file: a script can tell "no log yet" from an empty one


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="print what a job wrote")
    p.add_argument("job", help="job id")
    p.add_argument("--stderr", action="store_true", help="standard error instead of standard output")
    p.set_defaults(func=logs)


async def logs(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus logs") as bus:
        record = await bus.status(args.job)
        if record.state in (JobState.READY, JobState.PENDING):
            why = f": {shown(record.native_state)}" if record.native_state else ""
            print(
                f"lwfm-bus logs: job {shown(record.job_id)} has not started yet ({record.state.value}{why}); "
                f"no log yet -- 'lwfm-bus status {shown(record.job_id)}' says where it is",
                file=sys.stderr,
            )
            return _NOT_STARTED
        data = await bus.logs(args.job, "stderr" if args.stderr else "stdout")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    if record.retry_next is not None:  # after the log, on stderr: a pipe gets the bytes alone
        print(
            f"lwfm-bus logs: job {shown(record.job_id)} was run again as job {shown(record.retry_next)} "
            f"(its retry policy): 'lwfm-bus logs {shown(record.retry_next)}'",
            file=sys.stderr,
        )
    return 0
