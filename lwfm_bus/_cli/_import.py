"""``lwfm-bus import``: replay a bundle written by ``export`` here, moving events between buses with no live link."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._client import connect
from .._config import BusConfig

__all__ = ["register"]


def register(sub: Any) -> None:
    i = sub.add_parser("import", help="replay a bundle here (refused whole if damaged; repeatable)")
    i.add_argument("bundle", type=Path)
    i.set_defaults(func=import_)


async def import_(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus import") as bus:
        report = await bus.import_bundle(args.bundle)
    print(f"{report.events} events: {report.published} imported, {report.already} already here")
    return 0
