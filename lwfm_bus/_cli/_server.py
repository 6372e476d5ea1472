"""``lwfm-bus server``: the embedded nats-server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .._bus._connect import open_event_bus, serve_embedded
from .._config import BusConfig
from ._print import shown


def register(sub: Any) -> None:
    p = sub.add_parser("server", help="run the embedded NATS server (with JetStream) in the foreground")
    p.add_argument("--port", type=int, help="listen port (default: a free one)")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    if args.port is not None:
        config = config.model_copy(update={"embedded": config.embedded.model_copy(update={"port": args.port})})
    async with serve_embedded(config) as server:
        async with open_event_bus(config.model_copy(update={"servers": (server.url,)}), name="lwfm-bus server"):
            pass  # create the streams once, so subscribers can attach at once
        print(
            f"lwfm-bus: NATS server ready at {shown(server.url)} (store {shown(config.store_dir())}); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        await asyncio.Event().wait()
    return 0
