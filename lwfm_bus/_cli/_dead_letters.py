"""``lwfm-bus dead-letters``: the messages that were parked because they were not usable events.

Readers skip such a message and say so in one summary line; this is where to see
them: why each was parked, where it was found, and (escaped) what it held.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._print import shown

__all__ = ["register"]

_PREVIEW = 120  # characters of a parked message shown per line


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dead-letters",
        help="list parked messages (not valid events), oldest first",
        description="List the messages readers parked because they were not usable events: the reason, the "
        "subject and stream sequence where each was found, the error, and the start of its bytes (escaped).",
    )
    p.add_argument("--reason", help="only this reason (not-json, invalid, unknown-type, wrong-subject, ...)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (data in base64)")
    p.add_argument("--follow", action="store_true", help="keep listing as more are parked")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus dead-letters") as bus:
        async for d in bus.dead_letters(follow=args.follow):
            if args.reason and d.reason != args.reason:
                continue
            if args.json:
                doc = {
                    "seq": d.seq, "reason": d.reason, "subject": d.subject, "error": d.error,
                    "data": base64.b64encode(d.data).decode(),
                }  # fmt: skip
                sys.stdout.write(json.dumps(doc) + "\n")
            else:
                text = d.data[: _PREVIEW * 4].decode("utf-8", errors="replace")
                preview = shown(text[:_PREVIEW]) + ("..." if len(d.data) > _PREVIEW else "")
                sys.stdout.write(f"{d.seq:>6} {shown(d.reason):<13} {shown(d.subject)}  {shown(d.error)}  {preview}\n")
            sys.stdout.flush()
    return 0
