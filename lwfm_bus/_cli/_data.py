"""``lwfm-bus data show``: one data item and its provenance, the job that made it and that job's upstream chain."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._client import connect
from .._config import BusConfig
from ._print import data_json, job_json, shown, shown_json

__all__ = ["register"]


def register(sub: Any) -> None:
    d = sub.add_parser("data", help="one data item and its provenance")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    show = dsub.add_parser("show", help="the record, the job that made it and that job's upstream chain")
    show.add_argument("data_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_data)


async def show_data(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus data") as bus:
        prov = await bus.provenance(args.data_id)
    if args.json:
        doc = {
            "data": data_json(prov.data),
            "job": job_json(prov.job) if prov.job else None,
            "ancestors": [job_json(j) for j in prov.ancestors],
        }
        print(json.dumps(doc, indent=2))
        return 0
    d = prov.data
    print(f"data      {shown(d.data_id)}\nlocation  {shown(d.site)}:{shown(d.location)}")
    print(f"size      {d.size if d.size is not None else '-'}\nchecksum  {shown(d.checksum or '-')}")
    if d.direction:
        print(f"copied    {d.direction} from {shown(d.origin_site)}:{shown(d.origin)}")
    print(f"metadata  {shown_json(json.dumps(d.metadata, ensure_ascii=False))}")
    for label, job in [("made by", prov.job), *(("upstream", j) for j in prov.ancestors)]:
        if job is not None:
            print(f"{label:<9} {shown(job.job_id)} {job.state.value:<9} {shown(job.name or '')}")
    return 0
