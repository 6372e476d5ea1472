"""``lwfm-bus emit info|status|data``: a running job tells the bus something about itself.

Every job may run this many times, so its start-up counts (issue #21): what builds and
publishes the event (pydantic, nats-py) is imported once the arguments are parsed, and
``lwfm-bus emit --help`` or a usage error needs none of it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError
from .._states import JobState

if TYPE_CHECKING:
    from .._config import BusConfig
    from .._meta import MetaValue


def register(sub: Any) -> None:
    p = sub.add_parser("emit", help="from inside a job: publish info, status or data attributed to it")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    i = kinds.add_parser("info", help="an INFO status with a message")
    i.add_argument("text")
    s = kinds.add_parser("status", help="RUNNING, FINISHING or INFO")
    s.add_argument("state", type=str.upper, choices=["RUNNING", "FINISHING", "INFO"])
    s.add_argument("--info", help="a message")
    d = kinds.add_parser("data", help="data produced by this job, with metadata")
    d.add_argument("location", help="a path (size and checksum are added) or a URL")
    d.add_argument(
        "--meta",
        "-m",  # as notate, put and get take it
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata; values are typed: 3 -> int, 1.5 -> float, true -> bool, else string",
    )
    d.add_argument("--meta-json", help="metadata as one JSON object")
    p.set_defaults(func=run)


def parse_value(text: str) -> MetaValue:
    """Type a KEY=VALUE value the way a person means it."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_metadata(pairs: list[str], as_json: str | None) -> dict[str, MetaValue]:
    from .._limits import load_json_bounded

    meta: dict[str, MetaValue] = {}
    if as_json:
        try:
            loaded = load_json_bounded(as_json, "--meta-json")
        except ValueError as exc:
            raise ConfigError(f"--meta-json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--meta-json must be a JSON object")
        meta.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--meta {pair!r} is not KEY=VALUE")
        meta[key] = parse_value(value)
    return meta


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    from .._jobside import current_job, data_event, emit, status_event

    ctx = current_job()
    try:
        if args.kind == "info":
            payload: Any = status_event(ctx, JobState.INFO, args.text)
        elif args.kind == "status":
            payload = status_event(ctx, JobState(args.state), args.info)
        else:
            payload = data_event(ctx, args.location, parse_metadata(args.meta, args.meta_json))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    await emit(payload)
    return 0
