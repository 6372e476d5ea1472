"""``lwfm-bus up``: the whole singleton in one process tree -- server, trigger engine, local site."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._connect import serve_embedded


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="start the embedded server and every service; Ctrl-C stops them")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    async with serve_embedded(config) as server:
        local = config.model_copy(update={"servers": (server.url,), "engine": "on"})
        async with connect(local, name="lwfm-bus up") as bus:  # with a trigger engine replica
            for site in dict.fromkeys(("local", config.site)):  # a federation member runs jobs as itself too
                await bus.site(site)  # adopts jobs a previous run left behind, and keeps watching them
            print(f"lwfm-bus: up at {server.url} (home {config.home}); Ctrl-C stops it", file=sys.stderr, flush=True)
            await asyncio.Event().wait()
    return 0
