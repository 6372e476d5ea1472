"""Run by a remote job's wrapper in callback mode: the job reports its own start and end.

``python -m adapters._callback running`` when the command starts, ``... exit RC`` when
it ends.  Only the wrapper calls this, never the user's command: the wrapper is the
site's own code, so it may report the terminal state that a job's own ``emit`` may not.
Event ids are the deterministic ``<job>:<STATE>`` the adapters' reporter uses, so the
watcher's later report of the same transition (its safety-net poll) is dropped by the
bus as a duplicate.  A failure here never changes the job's exit code: it is logged to
the job directory, and the watcher still reports.  A job with a retry policy leaves a
FAILED end to the watcher: whether it runs again depends on the native state
(OUT_OF_MEMORY, TIMEOUT...), which the job cannot see.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import lwfm_bus as lb

__all__ = ["main", "status_for"]


def _native_id(env: Mapping[str, str]) -> str:
    """Slurm's id (``ARRAY_TASK`` for an array element), else the wrapper's pid (SSH)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or str(os.getppid())


def status_for(what: str, rc: int | None, env: Mapping[str, str]) -> lb.JobStatus:
    ctx = lb.current_job(env)
    if what == "running":
        state, info, native = lb.JobState.RUNNING, None, "running"
    elif env.get("LWFM_JOB_DIR") and Path(env["LWFM_JOB_DIR"], "cancel_requested").exists():
        state, info, native = lb.JobState.CANCELLED, "cancelled", "cancelled"
    elif rc == 0:
        state, info, native = lb.JobState.COMPLETE, None, "exited"
    else:
        state, info, native = lb.JobState.FAILED, f"exit code {rc}", "exited"
    return lb.JobStatus(
        job_id=ctx.job_id,
        site=ctx.site,
        state=state,
        workflow_id=ctx.workflow_id,
        name=ctx.name,
        native_id=_native_id(env),
        native_state=native,
        native_info=info,
        exit_code=None if what == "running" else rc,
        parent_ids=ctx.parent_ids,
        **ctx.attempt_marks(state, native, None if what == "running" else rc),
    )


async def _publish(status: lb.JobStatus) -> None:
    config = lb.load_config()
    async with lb.connect(config, name="lwfm-bus job callback") as bus:
        event = lb.make_event(
            status, source=f"/sites/{status.site}/adapter", id=f"{status.job_id}:{status.state.value}"
        )
        await bus.publish(event)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("running", "exit") or (argv[0] == "exit" and len(argv) != 2):
        print("usage: python -m adapters._callback running | exit RC", file=sys.stderr)
        return 2
    rc = int(argv[1]) if argv[0] == "exit" else None
    status = status_for(argv[0], rc, os.environ)
    if status.state is lb.JobState.FAILED and lb.current_job(os.environ).retry is not None:
        # Whether it runs again depends on how it failed, which only the site's watcher knows
        # (OUT_OF_MEMORY, TIMEOUT, NODE_FAIL...; the job sees an exit code): its end is said
        # there, once, with the native state its retry policy reads.
        return 0
    asyncio.run(_publish(status))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
