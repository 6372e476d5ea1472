"""``lwfm-bus demo``: the seed's use cases on the embedded bus -- 3a (A -> B -> C), then a join (3c).

It ends with a few commands to try next (on stderr, ready to paste), naming this run's
workflow and jobs and the global options it was given.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._ids import new_id
from .._jobs import JobDefn
from .._triggers import JoinTrigger
from ._print import shown


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run an example workflow (A -> B -> C, then a join) and print each job's status",
        description="Run a small example workflow of real local jobs and print each job's status: A, B and C one "
        "after another, each started when the previous one completed; then X and Y side by side, and Z, started by "
        "a join trigger once both have completed. With no bus running for this home, the demo serves one from this "
        "process for its duration (what it ran stays recorded in the home). It ends with commands to look at what "
        "it did.",
    )
    p.set_defaults(func=run)


def _next_commands(args: argparse.Namespace, workflow_id: str, z_id: str) -> list[str]:
    """Commands that show this run, with the global options the demo was given (so they reach the same bus)."""
    cli = ["lwfm-bus"]
    for flag, value in (("--home", args.home), ("--url", args.url), ("--site", args.site)):
        if value is not None:
            cli += [flag, str(value)]
    if args.federation is not None:
        cli += ["--federation", str(args.federation)]
    return [
        f"{shlex.join([*cli, 'workflow', 'show', workflow_id])}   # its jobs, their states and parents",
        f"{shlex.join([*cli, 'logs', z_id])}   # what the joined job Z printed",
        f"{shlex.join([*cli, 'events', '--all', '--no-follow', f'lwfm.*.*.{workflow_id}.>'])}   # its events",
    ]


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
    print("\nnext, try:", file=sys.stderr)
    for line in _next_commands(args, wf.workflow_id, final.job_id):
        print(f"  {shown(line)}", file=sys.stderr)
    return 0
