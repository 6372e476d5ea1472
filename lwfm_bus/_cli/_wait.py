"""``lwfm-bus wait``: block until a job ends, or until it is certain never to run.

For scripts: the exit status is 0 if the job succeeded, 1 if it ended otherwise; a
job whose triggers all ended without starting it is an error (one line saying which
trigger and why), not a wait for ever.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._print import final_line

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "wait",
        help="wait for a job to end (or to be certain never to run) and exit with its status",
        description="Wait until the job ends; print its final state and exit code. If the job is to be started "
        "by triggers and every one of them ended without starting it (expired, failed, cancelled), say so and "
        "stop instead of waiting for ever.",
    )
    p.add_argument("job", help="job id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 2)")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus wait") as bus:
        final = await bus.wait(args.job, timeout=args.timeout)
    print(final_line(final))
    return 0 if final.state.is_success else 1
