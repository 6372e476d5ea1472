"""``lwfm-bus put``: copy a local file onto a site and notate it there (``--meta`` as for notate)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._print import parse_meta, print_record

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("put", help="copy a local file onto a site and notate it there")
    p.add_argument("local_path", type=Path)
    p.add_argument("site_path")
    p.add_argument("--to", dest="data_site", default="local", help="destination site (default: local)")
    p.add_argument("--meta", "-m", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=put)


async def put(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus put") as bus:
        record = await bus.put(args.local_path, args.site_path, parse_meta(args.meta), site=args.data_site)
    print_record(record, args.json)
    return 0
