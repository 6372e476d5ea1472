"""``lwfm-bus logs``: the bytes a job wrote to standard output or standard error, unchanged."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="print what a job wrote")
    p.add_argument("job", help="job id")
    p.add_argument("--stderr", action="store_true", help="standard error instead of standard output")
    p.set_defaults(func=logs)


async def logs(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus logs") as bus:
        data = await bus.logs(args.job, "stderr" if args.stderr else "stdout")
    sys.stdout.buffer.write(data)
    return 0
