"""``lwfm-bus get``: copy a file off a site to here and notate the copy (``--meta`` as for notate).

The copy is recorded at its absolute path, as ``notate`` records a file here: a relative
location (``local:out.dat``) would mean nothing to anyone reading the record elsewhere.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._print import parse_meta, print_record

__all__ = ["register"]


def register(sub: Any) -> None:
    g = sub.add_parser("get", help="copy a file off a site to here and notate the copy")
    g.add_argument("site_path")
    g.add_argument("local_path", type=Path)
    g.add_argument("--from", dest="data_site", default="local", help="source site (default: local)")
    g.add_argument("--meta", "-m", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=get)


def _absolute(path: Path) -> Path:
    """``path`` made absolute the way notate records a file (its directory's symlinks resolved); its name kept."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name if path.name else path


async def get(args: argparse.Namespace, config: BusConfig) -> int:
    local_path = _absolute(args.local_path)
    async with connect(config, name="lwfm-bus get") as bus:
        record = await bus.get(args.site_path, local_path, parse_meta(args.meta), site=args.data_site)
    print_record(record, args.json)
    return 0
