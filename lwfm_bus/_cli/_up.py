"""``lwfm-bus up``: the whole singleton in one process tree -- server, trigger engine, site agents.

``up`` runs the agents of every site configured to be served there (``served_by_up``,
true by default; ``local`` always), so whatever is submitted to them runs.
``--ui`` serves the web dashboard too (``lwfm-bus ui``'s options, as ``--ui-port``...).
``--ready-fd`` is how a process that started ``up`` in the background learns, without
guessing, that it is serving: one line on that descriptor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import anyio

from .._bus._autostart import READY_LINE
from .._bus._connect import serve_embedded
from .._client import connect
from .._config import BusConfig
from ._metrics import add_metrics_options, announce, metrics_served, running
from ._ui import add_ui_options, serve_dashboard, settings_from


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start the embedded server, a trigger engine and the site agents; Ctrl-C (or 'lwfm-bus down') stops them",
        description="Run the whole lwfm-bus singleton for this home in the foreground: the embedded NATS server, "
        "a trigger engine replica, and an agent for every site served here (local, and each site of sites.toml "
        "whose served_by_up is true). Ctrl-C, or 'lwfm-bus down' from another terminal, stops it; jobs keep "
        "running when it stops, and the next 'up' adopts them.",
    )
    p.add_argument("--ui", action="store_true", help="serve the web dashboard too (see 'lwfm-bus ui')")
    add_ui_options(p, prefix="ui-")
    add_metrics_options(p)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    ui = settings_from(args, prefix="ui-") if args.ui else None  # refused before anything starts
    async with metrics_served(args, wants_engine=True, wants_agents=True) as observed, serve_embedded(config) as server:
        local = config.model_copy(update={"servers": (server.url,), "engine": "on", "agents": ("*",)})
        async with connect(local, name="lwfm-bus up") as bus, anyio.create_task_group() as tg:
            if ui is not None:
                await tg.start(serve_dashboard, bus, ui)
            sites = ", ".join(spec.name for spec in bus.served_sites())
            with running(observed, bus, bus.engine, bus.agents):
                announce(args, f"up at {server.url} (home {config.home}; agents for: {sites}); Ctrl-C stops it")
                if args.ready_fd is not None:
                    os.write(args.ready_fd, READY_LINE)
                    os.close(args.ready_fd)
                await asyncio.Event().wait()
    return 0
