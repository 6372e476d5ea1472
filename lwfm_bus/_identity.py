"""Who is calling: a job's identity from its environment, and checksums of local bytes.

This is, with the CLI, the one place that reads the environment, because that is
where a launched job finds its identity (``LWFM_JOB_ID``, ``LWFM_SITE``,
``LWFM_WORKFLOW_ID``, ``LWFM_PARENT_IDS``).  It is kept apart from the job-side helpers
so that the core can attribute data to the calling job without importing them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from ._errors import JobError
from ._jobs import JobContext

__all__ = ["calling_job", "current_job", "file_checksum", "identity_env"]


def identity_env(ctx: JobContext) -> dict[str, str]:
    """The variables a site gives a launched job so that :func:`current_job` finds it (for adapters)."""
    return {
        "LWFM_JOB_ID": ctx.job_id,
        "LWFM_SITE": ctx.site,
        "LWFM_WORKFLOW_ID": ctx.workflow_id or "",
        "LWFM_JOB_NAME": ctx.name or "",
        "LWFM_PARENT_IDS": ",".join(ctx.parent_ids),
    }


def current_job(env: Mapping[str, str] | None = None) -> JobContext:
    """This job's identity, from the environment its site gave it."""
    env = os.environ if env is None else env
    job_id = env.get("LWFM_JOB_ID")
    if not job_id:
        raise JobError("not inside an lwfm-bus job: LWFM_JOB_ID is not set")
    parents = tuple(p for p in env.get("LWFM_PARENT_IDS", "").split(",") if p)
    return JobContext(
        job_id=job_id,
        site=env.get("LWFM_SITE") or "local",
        workflow_id=env.get("LWFM_WORKFLOW_ID") or None,
        name=env.get("LWFM_JOB_NAME") or None,
        parent_ids=parents,
    )


def calling_job() -> JobContext | None:
    """The job this process runs as, or None outside a job; a malformed identity raises."""
    if not os.environ.get("LWFM_JOB_ID"):
        return None
    return current_job()


def file_checksum(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    """``'<algorithm>:<hex>'`` and the size of a local file, read in blocks (call it in a thread)."""
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return f"{algorithm}:{h.hexdigest()}", size
