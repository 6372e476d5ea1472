"""``lwfm-bus demo``: the seed's use cases on the embedded bus -- 3a (A -> B -> C), then a join (3c)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._ids import new_id
from .._jobs import JobDefn
from .._triggers import JoinTrigger
from ._print import shown


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run an example workflow (A -> B -> C, then a join) and print each job's status")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    if config.autostart == "background":
        # A demo cleans up after itself: with nothing running it serves the bus (server,
        # engine, local agent) from this process, and stops it when it ends.
        config = config.model_copy(update={"autostart": "process"})
    async with connect(config, name="lwfm-bus demo") as bus:
        wf = await bus.define_workflow("demo A->B->C", {"example": True})
        print(f"bus at {bus.connected_url}; workflow {wf.workflow_id}", file=sys.stderr)
        parents: tuple[str, ...] = ()
        for step in ("A", "B", "C"):
            code = f"import os; print('step {step} of', os.environ['LWFM_WORKFLOW_ID'])"
            job = await bus.submit(JobDefn(argv=(sys.executable, "-c", code), name=step), workflow=wf, parents=parents)
            final = await job.wait(timeout=60)
            out = shown((await job.logs()).decode().strip())
            print(f"{step}  {job.job_id}  {final.state.value:<9} exit={final.exit_code}  {out}")
            if not final.state.is_success:
                return 1
            parents = (job.job_id,)
        # 3c: X and Y run side by side; a join trigger starts Z when both are COMPLETE.
        code = "import os; print('joined', os.environ['LWFM_PARENT_IDS'].count(',') + 1, 'parents')"
        z = JobDefn(argv=(sys.executable, "-c", code), name="Z")
        xy = [JobDefn(argv=(sys.executable, "-c", f"print('{n}')"), name=n) for n in "XY"]
        x_id, y_id = new_id(), new_id()
        trigger = await bus.set_job_trigger(z, [x_id, y_id], job_id=new_id(), workflow=wf)
        for defn, job_id in zip(xy, (x_id, y_id), strict=True):
            await bus.submit(defn, workflow=wf, job_id=job_id)
        assert isinstance(trigger, JoinTrigger) and trigger.downstream.job_id is not None
        final = await bus.wait(trigger.downstream.job_id, timeout=60)
        out = shown((await bus.logs(final.job_id)).decode().strip())
        print(f"Z  {final.job_id}  {final.state.value:<9} exit={final.exit_code}  {out} (join trigger on X, Y)")
        if not final.state.is_success:
            return 1
        print("workflow jobs:")
        for r in await bus.jobs(workflow=wf):
            print(f"  {shown(r.name)}  {r.state.value}")
    return 0
