"""``lwfm-bus demo``: the seed's use case 3a, A -> B -> C, on the embedded bus."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._jobs import JobDefn


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run an example A -> B -> C workflow and print each job's status")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    async with connect(config, name="lwfm-bus demo") as bus:
        wf = await bus.define_workflow("demo A->B->C", {"example": True})
        print(f"bus at {bus.connected_url}; workflow {wf.workflow_id}", file=sys.stderr)
        parents: tuple[str, ...] = ()
        for step in ("A", "B", "C"):
            code = f"import os; print('step {step} of', os.environ['LWFM_WORKFLOW_ID'])"
            job = await bus.submit(JobDefn(argv=(sys.executable, "-c", code), name=step), workflow=wf, parents=parents)
            final = await job.wait(timeout=60)
            out = (await job.logs()).decode().strip()
            print(f"{step}  {job.job_id}  {final.state.value:<9} exit={final.exit_code}  {out}")
            if not final.state.is_success:
                return 1
            parents = (job.job_id,)
        print("workflow jobs:")
        for r in await bus.jobs(workflow=wf):
            print(f"  {r.name}  {r.state.value}")
    return 0
