"""``lwfm-bus down``: stop the bus running for this home (started by ``up``, or in the background).

Running jobs are not stopped: they keep running, and the next ``up`` (or agent) adopts
them and reports how they ended.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from .._bus._autostart import stop_background, up_record
from .._bus._connect import running_server_url
from .._config import BusConfig
from ._print import shown


def register(sub: Any) -> None:
    p = sub.add_parser("down", help="stop the bus running for this home (its jobs keep running)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for it to stop (default: 30)")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    url = running_server_url(config.home)
    record = up_record(config.home)
    pid = record.get("owner_pid") if record else None
    if url is None or not isinstance(pid, int):
        print(f"lwfm-bus: nothing is running for {shown(config.home)}", file=sys.stderr)
        return 0
    if not await anyio.to_thread.run_sync(stop_background, pid, args.timeout):
        print(f"lwfm-bus: the bus at {shown(url)} (pid {pid}) did not stop within {args.timeout:g}s", file=sys.stderr)
        return 1
    print(f"lwfm-bus: stopped the bus at {shown(url)} (pid {pid})", file=sys.stderr)
    return 0
