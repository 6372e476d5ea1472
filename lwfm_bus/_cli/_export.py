"""``lwfm-bus export``: write events (and so the data records) to a bundle file, for a bus with no live link."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._errors import BundleError
from ._print import shown

__all__ = ["register"]


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +00:00)")
    return when


def register(sub: Any) -> None:
    e = sub.add_parser("export", help="write events (and so the data records) to a bundle file")
    e.add_argument("-o", "--output", type=Path, required=True, help="the bundle file to write")
    e.add_argument("--workflow", help="only this workflow's events")
    since = e.add_mutually_exclusive_group()
    since.add_argument("--since-seq", type=int, help="only events from this stream sequence on")
    since.add_argument("--since", type=_when, help="only events from this time on (ISO 8601 with a zone)")
    e.set_defaults(func=export)


async def export(args: argparse.Namespace, config: BusConfig) -> int:
    if args.since_seq is not None and args.since_seq < 1:
        raise BundleError("--since-seq starts at 1")
    async with connect(config, name="lwfm-bus export") as bus:
        count = await bus.export_bundle(
            args.output, workflow=args.workflow, since_seq=args.since_seq, since_time=args.since
        )
    print(f"{count} events written to {shown(args.output)}", file=sys.stderr)
    return 0
