"""``lwfm-bus notate | find | put | get | data show``: the metadata repository from a shell.

Values on the command line are typed the way JSON reads them -- ``step=3`` is the
number 3, ``ok=true`` a boolean, ``tags=["a","b"]`` a list -- and anything that is
not JSON is a string; quote it as JSON (``step='"3"'``) to force a string.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .._client import connect
from .._config import BusConfig
from .._errors import DataError
from .._query import DataPage, DataRecord

__all__ = ["parse_meta", "parse_where", "register"]

_PAGE: TypeAdapter[DataPage] = TypeAdapter(DataPage)
_RECORD: TypeAdapter[DataRecord] = TypeAdapter(DataRecord)
_CONDITION = re.compile(r"^(?P<key>[^=~<>?]+?)(?P<op>>=|<=|=|~|>|<|\?)(?P<value>.*)$", re.DOTALL)
_RANGE_OPS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


def _typed(text: str) -> Any:
    """JSON if it parses (objects and null too: the models then say why they are refused), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_meta(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, typed (see the module docstring)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--meta {item!r}: expected key=value")
        out[key] = _typed(value)
    return out


def parse_where(items: list[str], present: list[str]) -> dict[str, Any]:
    """``--where`` conditions to a signature: ``k=v``, ``k~glob``, ``k>=n`` (ranges merge), ``k?``."""
    where: dict[str, Any] = {key: {"op": "present"} for key in present}
    for item in items:
        m = _CONDITION.match(item)
        if m is None:
            raise DataError(f"--where {item!r}: expected key=value, key~glob, key>=n, key<n (...) or key?")
        key, op, value = m["key"], m["op"], m["value"]
        if op == "?":
            if value:
                raise DataError(f"--where {item!r}: nothing may follow '?'")
            predicate: dict[str, Any] = {"op": "present"}
        elif op == "~":
            predicate = {"op": "glob", "pattern": value}
        elif op == "=":
            predicate = {"op": "eq", "value": _typed(value)}
        else:
            number = _typed(value)
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise DataError(f"--where {item!r}: {op} needs a number, not {value!r}")
            previous = where.get(key)
            if previous is not None and previous.get("op") == "range":
                predicate = {**previous, _RANGE_OPS[op]: number}
            else:
                predicate = {"op": "range", _RANGE_OPS[op]: number}
        if key in where and not (predicate["op"] == "range" and where[key].get("op") == "range"):
            raise DataError(f"--where: two conditions on {key!r}; one key takes one condition (ranges merge)")
        where[key] = predicate
    return where


def register(sub: Any) -> None:
    n = sub.add_parser("notate", help="record data with metadata (and publish its data event)")
    n.add_argument("location", help="path on the site, or a URL")
    n.add_argument("--meta", "-m", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeat)")
    n.add_argument("--on-site", dest="data_site", help="site where the bytes live (default: this one)")
    n.add_argument("--json", action="store_true", help="machine-readable output")
    n.set_defaults(func=notate)

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

    p = sub.add_parser("put", help="copy a local file onto a site and notate it there")
    p.add_argument("local_path", type=Path)
    p.add_argument("site_path")
    p.add_argument("--to", dest="data_site", default="local", help="destination site (default: local)")
    p.add_argument("--meta", "-m", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=put)

    g = sub.add_parser("get", help="copy a file off a site to here and notate the copy")
    g.add_argument("site_path")
    g.add_argument("local_path", type=Path)
    g.add_argument("--from", dest="data_site", default="local", help="source site (default: local)")
    g.add_argument("--meta", "-m", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=get)

    d = sub.add_parser("data", help="one data item and its provenance")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    show = dsub.add_parser("show", help="the record, the job that made it and that job's upstream chain")
    show.add_argument("data_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_data)


def _print_record(record: DataRecord, as_json: bool) -> None:
    if as_json:
        print(_RECORD.dump_json(record).decode())
    else:
        print(record.data_id)


async def notate(args: argparse.Namespace, config: BusConfig) -> int:
    metadata = parse_meta(args.meta)
    async with connect(config, name="lwfm-bus notate") as bus:
        record = await bus.notate(args.location, metadata, site=args.data_site)
    _print_record(record, args.json)
    return 0


def _query_file(path: Path) -> dict[str, Any]:
    where = "<stdin>" if str(path) == "-" else str(path)
    try:
        doc = json.loads(sys.stdin.read() if where == "<stdin>" else path.read_text())
    except OSError as exc:
        raise DataError(f"{where}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise DataError(f"{where}: not valid JSON: {exc}") from None
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
        meta = json.dumps(r.metadata, separators=(",", ":"), ensure_ascii=False)
        print(f"{r.data_id:<32}  {r.site:<10} {size:>10}  {r.time:%Y-%m-%d %H:%M:%S}  {r.location}  {meta}")
    if page.next_offset is not None:
        print(f"(more: --offset {page.next_offset})", file=sys.stderr)
    return 0


async def put(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus put") as bus:
        record = await bus.put(args.local_path, args.site_path, parse_meta(args.meta), site=args.data_site)
    _print_record(record, args.json)
    return 0


async def get(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus get") as bus:
        record = await bus.get(args.site_path, args.local_path, parse_meta(args.meta), site=args.data_site)
    _print_record(record, args.json)
    return 0


async def show_data(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus data") as bus:
        prov = await bus.provenance(args.data_id)
    if args.json:
        doc = {
            "data": json.loads(_RECORD.dump_json(prov.data)),
            "job": _job_json(prov.job) if prov.job else None,
            "ancestors": [_job_json(j) for j in prov.ancestors],
        }
        print(json.dumps(doc, indent=2))
        return 0
    d = prov.data
    print(f"data      {d.data_id}\nlocation  {d.site}:{d.location}")
    print(f"size      {d.size if d.size is not None else '-'}\nchecksum  {d.checksum or '-'}")
    if d.direction:
        print(f"copied    {d.direction} from {d.origin_site}:{d.origin}")
    print(f"metadata  {json.dumps(d.metadata, ensure_ascii=False)}")
    for label, job in [("made by", prov.job), *(("upstream", j) for j in prov.ancestors)]:
        if job is not None:
            print(f"{label:<9} {job.job_id} {job.state.value:<9} {job.name or ''}")
    return 0


def _job_json(job: Any) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "site": job.site,
        "workflow_id": job.workflow_id,
        "name": job.name,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "parent_ids": list(job.parent_ids),
    }
