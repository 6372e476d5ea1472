"""``lwfm-bus notate``: record data with metadata (``--meta``, typed as JSON: see :mod:`._print`)."""

from __future__ import annotations

import argparse
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._print import parse_meta, print_record

__all__ = ["register"]


def register(sub: Any) -> None:
    n = sub.add_parser("notate", help="record data with metadata (and publish its data event)")
    n.add_argument("location", help="path on the site, or a URL")
    n.add_argument("--meta", "-m", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeat)")
    n.add_argument("--on-site", dest="data_site", help="site where the bytes live (default: this one)")
    n.add_argument("--json", action="store_true", help="machine-readable output")
    n.set_defaults(func=notate)


async def notate(args: argparse.Namespace, config: BusConfig) -> int:
    metadata = parse_meta(args.meta)
    async with connect(config, name="lwfm-bus notate") as bus:
        record = await bus.notate(args.location, metadata, site=args.data_site)
    print_record(record, args.json)
    return 0
