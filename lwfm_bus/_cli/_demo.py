"""``lwfm-bus demo``: the bus on the embedded server, with events flowing end to end."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._events import DataArrival, EventData, JobStatus, SiteHeartbeat, make_event, new_id
from .._states import JobState
from ._events import describe


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="start the embedded bus, publish a small workflow's events and show them")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    site = config.site
    wf = "demo-" + new_id()[:8]
    src = f"/sites/{site}/demo"
    script: list[EventData] = [SiteHeartbeat(site=site, adapter="local")]
    for job in ("A", "B", "C"):
        job_id = f"{wf}-{job}"
        script += [
            JobStatus(job_id=job_id, site=site, state=s, workflow_id=wf, name=job)
            for s in (JobState.PENDING, JobState.RUNNING)
        ]
        script.append(
            DataArrival(
                data_id=new_id(),
                site=site,
                location=str(config.home / "demo" / wf / f"{job}.out"),
                metadata={"step": job, "workflow": wf},
                job_id=job_id,
                workflow_id=wf,
            )
        )
        script.append(
            JobStatus(job_id=job_id, site=site, state=JobState.COMPLETE, workflow_id=wf, name=job, exit_code=0)
        )
    async with connect(config, name="lwfm-bus demo") as bus:
        print(f"bus at {bus.connected_url}; workflow {wf}", file=sys.stderr)
        async with bus.subscribe(f"lwfm.{site}.>") as sub:
            for payload in script:
                await bus.publish(make_event(payload, source=src))
            for _ in script:
                event = await sub.next(timeout=10)
                print(f"{sub.last_seq:>6} {event.nats_subject():<48} {describe(event)}")
    return 0
