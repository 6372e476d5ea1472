"""Inside a running job: who am I, and how do I tell the bus something.

Every job an adapter launches finds its identity (``LWFM_JOB_ID``, ``LWFM_SITE``,
``LWFM_WORKFLOW_ID``, ``LWFM_PARENT_IDS``) and the bus address and credentials
(``LWFM_BUS_*``) in its environment.  This module is the one place besides the CLI
that reads the environment, because that is where a job's identity lives.

A job may report progress (INFO), its own phases (RUNNING, FINISHING) and data.  Its
terminal state is reported by its site, which sees the exit code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from ._bus._connect import open_event_bus
from ._config import load_config
from ._errors import JobError
from ._events import DataArrival, EventData, JobStatus, make_event, new_id
from ._identity import current_job, file_checksum
from ._jobs import JobContext
from ._meta import Metadata
from ._states import JobState

__all__ = ["current_job", "data_event", "emit", "emit_data", "emit_info", "emit_status", "file_checksum"]

_SELF_REPORTABLE = frozenset({JobState.INFO, JobState.RUNNING, JobState.FINISHING})


def status_event(ctx: JobContext, state: JobState, info: str | None = None) -> JobStatus:
    if state not in _SELF_REPORTABLE:
        allowed = ", ".join(sorted(s.value for s in _SELF_REPORTABLE))
        raise JobError(f"a job may report {allowed} about itself; its site reports {state.value}")
    return JobStatus(
        job_id=ctx.job_id,
        site=ctx.site,
        state=state,
        workflow_id=ctx.workflow_id,
        name=ctx.name,
        info=info,
        parent_ids=ctx.parent_ids,
        **ctx.attempt_marks(state, None, None),
    )


def data_event(ctx: JobContext, location: str, metadata: Metadata | None = None) -> DataArrival:
    """A data arrival attributed to the job; a local file gets its size and checksum."""
    path = Path(location)
    size = checksum = None
    if path.is_file():
        checksum, size = file_checksum(path)
        location = str(path.resolve())
    return DataArrival(
        data_id=new_id(),
        site=ctx.site,
        location=location,
        metadata=dict(metadata or {}),
        size=size,
        checksum=checksum,
        job_id=ctx.job_id,
        workflow_id=ctx.workflow_id,
    )


async def emit(payload: EventData, env: Mapping[str, str] | None = None) -> None:
    """Publish one event on the bus named in the job's environment.

    Through the event bus alone, not :func:`~lwfm_bus.connect`: publishing needs no
    index, site or engine, and a job may emit often, so what it imports counts (issue #21).
    """
    config = load_config(env)
    async with open_event_bus(config, name="lwfm-bus job") as bus:
        await bus.publish(make_event(payload, source=f"/sites/{config.site}/job"))


def emit_info(text: str) -> None:
    """Blocking: publish an INFO status for the current job."""
    ctx = current_job()
    asyncio.run(emit(status_event(ctx, JobState.INFO, text)))


def emit_status(state: JobState | str, info: str | None = None) -> None:
    """Blocking: publish RUNNING, FINISHING or INFO for the current job."""
    ctx = current_job()
    asyncio.run(emit(status_event(ctx, JobState(state), info)))


def emit_data(location: str, metadata: Metadata | None = None) -> None:
    """Blocking: publish a data arrival produced by the current job."""
    ctx = current_job()
    asyncio.run(emit(data_event(ctx, location, metadata)))
