"""``lwfm-bus agent --site NAME``: run a site's jobs from this machine.

Any number of agents of one site, on any machines, share its submissions and its
``max_concurrent``; an agent that dies leaves its jobs to the others.  Typical use: an
agent on an HPC login node for a Slurm site, or more agents next to ``up``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._metrics import add_metrics_options, announce, metrics_served, running


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the agent of one or more sites in the foreground (Ctrl-C stops it; jobs keep running)",
        description="Serve sites: take their submissions from the bus and run them through each site's adapter.",
    )
    p.add_argument(
        "--site",
        dest="agent_sites",
        action="append",
        required=True,
        metavar="NAME",
        help="a site to serve (repeatable)",
    )
    add_metrics_options(p)
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    served = config.model_copy(update={"agents": tuple(dict.fromkeys(args.agent_sites))})
    async with metrics_served(args, wants_agents=True) as observed, connect(served, name="lwfm-bus agent") as bus:
        with running(observed, bus, agents=bus.agents):
            names = ", ".join(spec.name for spec in bus.served_sites())
            announce(args, f"agent for {names} at {bus.connected_url}; Ctrl-C stops it")
            await asyncio.Event().wait()
    return 0
