"""``lwfm-bus notify-send``: the job a notify trigger starts, which POSTs a run's end (see :mod:`.._notifying`)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from .._subjects import check_token

if TYPE_CHECKING:
    from .._config import BusConfig

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "notify-send", help="(inside notification jobs) POST a run's end to the webhook in LWFM_NOTIFY_URL"
    )
    p.add_argument("--workflow", required=True, type=lambda v: check_token(v, "workflow id"), help="the run")
    p.add_argument("--outcome", required=True, choices=("failure", "success"), help="how it ended")
    p.add_argument("--title", default="", help="the pipeline's name, for people")
    p.add_argument("--withdraw", action="append", default=[], metavar="TRIGGER", help="triggers no longer due")
    p.set_defaults(func=notify_send)


async def notify_send(args: argparse.Namespace, config: BusConfig) -> int:
    from .._notifying import send_notification

    print(await send_notification(os.environ, args.workflow, args.outcome, args.title, args.withdraw))
    return 0
