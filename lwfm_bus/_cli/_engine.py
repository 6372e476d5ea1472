"""``lwfm-bus engine``: run one trigger engine replica in the foreground (as many as you like, on any machine)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pydantic import ValidationError

from .._bus._fedkeeper import keeping_sources
from .._client import connect
from .._config import BusConfig
from .._engine._replica import EngineConfig, serve_engine
from .._errors import ConfigError
from ._metrics import add_metrics_options, announce, metrics_served, running

_CRASH_POINTS = ("after-claim", "after-submit", "after-fired")


def register(sub: Any) -> None:
    p = sub.add_parser("engine", help="run a trigger engine replica (as many as you like, on any machine)")
    p.add_argument("--name", help="this replica's name in claims (default: host-pid)")
    p.add_argument("--ack-wait", type=float, default=10.0, help="seconds before a dead replica's events move on")
    p.add_argument("--max-inflight", type=int, default=256, help="events judged at once")
    # Test hook: the process SIGKILLs itself at a point of the firing protocol.
    p.add_argument("--crash-at", action="append", default=[], choices=_CRASH_POINTS, help=argparse.SUPPRESS)
    add_metrics_options(p)
    p.set_defaults(func=run_engine)


async def run_engine(args: argparse.Namespace, config: BusConfig) -> int:
    fields: dict[str, Any] = {
        "ack_wait_s": args.ack_wait,
        "max_inflight": args.max_inflight,
        "crash_at": frozenset(args.crash_at),
    }
    if args.name:
        fields["name"] = args.name
    try:
        engine_config = EngineConfig.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"lwfm-bus engine: {exc.errors(include_url=False)[0]['msg']}") from None
    async with metrics_served(args, wants_engine=True) as observed:
        async with connect(config.model_copy(update={"engine": "off"}), name="lwfm-bus engine") as bus:
            async with keeping_sources(bus), serve_engine(bus, engine_config) as engine:
                with running(observed, bus, engine):
                    announce(args, f"engine {engine.config.name} ready ({len(engine.index)} triggers indexed)")
                    await asyncio.Event().wait()
    return 0
