"""``lwfm-bus find``: search the metadata repository (``--where``, typed as JSON: see :mod:`._print`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .._client import connect
from .._config import BusConfig
from .._errors import DataError
from .._limits import load_json_bounded, read_text_bounded
from .._query import DataPage
from ._print import parse_where, shown, shown_json

__all__ = ["register"]

_PAGE: TypeAdapter[DataPage] = TypeAdapter(DataPage)


def register(sub: Any) -> None:
    f = sub.add_parser("find", help="find data by metadata")
    f.add_argument(
        "--where", "-w", action="append", default=[], metavar="COND",
        help="key=value, key~glob, key>=n / key>n / key<=n / key<n, or key? (repeat: all must hold)",
    )  # fmt: skip
    f.add_argument("--has", action="append", default=[], metavar="KEY", help="the key is present (repeat)")
    f.add_argument("--query", type=Path, help="a JSON query file (schemas/files/data-query.json); '-' for stdin")
    f.add_argument("--on-site", dest="data_site", help="only data on this site")
    f.add_argument("--workflow", help="only data of this workflow")
    f.add_argument("--job", help="only data of this job")
    f.add_argument("--sort", default="time", help="time (default), location, size, or meta:KEY")
    f.add_argument("--desc", action="store_true", help="descending")
    f.add_argument("--limit", type=int, default=100, help="page size (default 100)")
    f.add_argument("--offset", type=int, default=0, help="skip this many (the previous page's next offset)")
    f.add_argument("--json", action="store_true", help="machine-readable output (schemas/files/data-page.json)")
    f.set_defaults(func=find)


def _query_file(path: Path) -> dict[str, Any]:
    where = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = read_text_bounded(sys.stdin if where == "<stdin>" else path, where)
    except OSError as exc:
        raise DataError(f"{where}: cannot read: {exc.strerror}") from None
    except ValueError as exc:  # too large, not UTF-8
        raise DataError(str(exc)) from None
    try:
        doc = load_json_bounded(text, where)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON: {exc}") from None
    except ValueError as exc:  # too deep
        raise DataError(str(exc)) from None
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object (schemas/files/data-query.json)")
    return doc


async def find(args: argparse.Namespace, config: BusConfig) -> int:
    options: dict[str, Any] = _query_file(args.query) if args.query else {}
    where = {**options.pop("where", {}), **parse_where(args.where, args.has)}
    for name, value in (
        ("site", args.data_site), ("workflow_id", args.workflow), ("job_id", args.job),
    ):  # fmt: skip
        if value is not None:
            options[name] = value
    options.setdefault("order_by", args.sort)
    options.setdefault("descending", args.desc)
    options.setdefault("limit", args.limit)
    options.setdefault("offset", args.offset)
    async with connect(config, name="lwfm-bus find") as bus:
        page = await bus.find(where, **options)
    if args.json:
        print(_PAGE.dump_json(page).decode())
        return 0
    print(f"{'DATA ID':<32}  {'SITE':<10} {'SIZE':>10}  {'TIME':<19}  LOCATION  METADATA")
    for r in page.records:
        size = "-" if r.size is None else str(r.size)
        meta = shown_json(json.dumps(r.metadata, separators=(",", ":"), ensure_ascii=False))
        when = f"{r.time:%Y-%m-%d %H:%M:%S}"
        print(f"{shown(r.data_id):<32}  {shown(r.site):<10} {size:>10}  {when}  {shown(r.location)}  {meta}")
    if page.next_offset is not None:
        print(f"(more: --offset {page.next_offset})", file=sys.stderr)
    return 0
