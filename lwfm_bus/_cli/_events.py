"""``lwfm-bus events``: tail the bus, for people (one line each) or machines (``--json``)."""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from datetime import datetime
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._events import DataEvent, Event, JobStatusEvent, SiteHeartbeatEvent, encode_event
from .._subjects import DLQ_ROOT, ROOT
from ._print import shown

_SEEN_IDS = 100_000  # event ids remembered to show each event once


def register(sub: Any) -> None:
    p = sub.add_parser("events", help="show events live (and optionally history first)")
    p.add_argument("filter", nargs="?", default=f"{ROOT}.>", help="NATS subject filter (default: lwfm.>)")
    p.add_argument("--json", action="store_true", help="one CloudEvents JSON object per line")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--all", action="store_true", help="replay the whole history first")
    start.add_argument("--since-seq", type=int, metavar="SEQ", help="replay from this stream sequence")
    start.add_argument(
        "--since", type=datetime.fromisoformat, metavar="TIME", help="replay from this ISO-8601 time (with timezone)"
    )
    p.add_argument("--no-follow", action="store_true", help="stop at the end of the history")
    p.set_defaults(func=run)


def describe(event: Event) -> str:
    """A one-line summary for people: whatever came with the event is escaped (:func:`._print.shown`)."""
    if isinstance(event, JobStatusEvent):
        d = event.data
        extra = f" exit={d.exit_code}" if d.exit_code is not None else ""
        info = f" {shown(d.info)}" if d.info else ""
        return f"job {shown(d.job_id)} {d.state.value}{extra} on {shown(d.site)}{info}"
    if isinstance(event, DataEvent):
        d2 = event.data
        meta = " ".join(f"{shown(k)}={shown(v)}" for k, v in d2.metadata.items())
        return f"data {shown(d2.location)} on {shown(d2.site)} {meta}".rstrip()
    if isinstance(event, SiteHeartbeatEvent):
        return f"site {shown(event.data.site)} {event.data.status.value} ({shown(event.data.adapter)})"
    return f"{shown(event.type.removeprefix('lwfm.'))} {shown(event.subject)}"


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    if args.since is not None and args.since.tzinfo is None:
        print("lwfm-bus: error: --since needs a timezone, e.g. 2026-01-01T00:00:00+00:00", file=sys.stderr)
        return 2
    if args.filter.split(".", 1)[0] == DLQ_ROOT:
        print(
            "lwfm-bus: error: parked messages are not events: list them with 'lwfm-bus dead-letters'", file=sys.stderr
        )
        return 2
    # One event id is one event: a foreign client may have stored a copy (no Nats-Msg-Id).
    seen: OrderedDict[str, None] = OrderedDict()
    async with connect(config, name="lwfm-bus events") as bus:
        sub = bus.subscribe(
            args.filter,
            start_seq=args.since_seq,
            start_time=args.since,
            from_start=args.all,
            follow=not args.no_follow,
        )
        async with sub:
            where = f"{shown(args.filter)} at {shown(bus.connected_url)}"
            print(f"lwfm-bus: listening on {where}", file=sys.stderr, flush=True)
            async for event in sub:
                if event.id in seen:
                    continue
                seen[event.id] = None
                if len(seen) > _SEEN_IDS:
                    seen.popitem(last=False)
                if args.json:
                    sys.stdout.write(encode_event(event).decode() + "\n")
                else:
                    stamp = event.time.astimezone().strftime("%H:%M:%S.%f")[:-3]
                    sys.stdout.write(f"{stamp} {sub.last_seq:>6} {describe(event)}\n")
                sys.stdout.flush()
    return 0
