"""``lwfm-bus cancel``: cancel a job and everything it started."""

from __future__ import annotations

import argparse
from typing import Any

from .._client import connect
from .._config import BusConfig


def register(sub: Any) -> None:
    p = sub.add_parser("cancel", help="cancel a job and everything it started")
    p.add_argument("job", help="job id")
    p.set_defaults(func=cancel)


async def cancel(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus cancel") as bus:
        await bus.cancel(args.job)
    return 0
