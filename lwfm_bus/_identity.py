"""The launched job's environment contract, and checksums of local bytes.

What a site gives every job it launches, in one place: its identity (``LWFM_JOB_ID``,
``LWFM_SITE``, ``LWFM_WORKFLOW_ID``, ``LWFM_JOB_NAME``, ``LWFM_PARENT_IDS``;
:func:`identity_env`), how it reaches the bus by itself (``LWFM_BUS_*``;
:func:`bus_env`), and, for a per-arrival job, the data that started it
(:data:`TRIGGER_DATA_ENV`).  The job side reads them back here (:func:`current_job`);
this is, with the CLI, the one place that reads the environment.  It is kept apart from
the job-side helpers so that the core can attribute data to the calling job without
importing them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from ._config import BusConfig
from ._errors import JobError
from ._jobs import JobContext, RetryPolicy

__all__ = [
    "CREDENTIAL_ENV",
    "SCHEDULE_TICK_ENV",
    "TRIGGER_DATA_ENV",
    "bus_env",
    "calling_job",
    "current_job",
    "file_checksum",
    "identity_env",
]

TRIGGER_DATA_ENV = "LWFM_TRIGGER_DATA_ID"
"""A per-arrival job finds here the id of the data record that started it."""
SCHEDULE_TICK_ENV = "LWFM_SCHEDULE_TICK"
"""A schedule's job finds here the tick it is for (ISO 8601, UTC), which may be long past after downtime."""


def identity_env(ctx: JobContext) -> dict[str, str]:
    """The variables a site gives a launched job so that :func:`current_job` finds it (for adapters)."""
    return {
        "LWFM_JOB_ID": ctx.job_id,
        "LWFM_SITE": ctx.site,
        "LWFM_WORKFLOW_ID": ctx.workflow_id or "",
        "LWFM_JOB_NAME": ctx.name or "",
        "LWFM_PARENT_IDS": ",".join(ctx.parent_ids),
        **_attempt_env(ctx),
    }


def _attempt_env(ctx: JobContext) -> dict[str, str]:
    """Which attempt a job is, and its retry policy: a callback from the job's host marks its end alike.

    Always set (empty when unused), so that a value left in the agent's environment or
    in the job's own ``env`` can never make a job without a policy look retried.
    """
    return {
        "LWFM_ATTEMPT": str(ctx.attempt),
        "LWFM_ATTEMPT_OF": ctx.attempt_of or "",
        "LWFM_RETRY": ctx.retry.model_dump_json(exclude_defaults=True) if ctx.retry is not None else "",
    }


# The variables that carry the bus's credentials (as bus_env() sets them): a process started
# to reach this bus gets these, and nothing else of ours.
CREDENTIAL_ENV = (
    "LWFM_BUS_USER",
    "LWFM_BUS_PASSWORD",
    "LWFM_BUS_TOKEN",
    "LWFM_BUS_CREDS",
    "LWFM_BUS_TLS_CA",
    "LWFM_BUS_TLS_CERT",
    "LWFM_BUS_TLS_KEY",
)


def bus_env(config: BusConfig, connected_url: str | None) -> dict[str, str]:
    """How a launched job reaches the bus by itself (the address and credentials it is given)."""
    env = {
        "LWFM_BUS_URL": connected_url or ",".join(config.servers),
        "LWFM_BUS_HOME": str(config.home),
        # A job speaks for the site that launched it (its triggers are judged there),
        # and reaches that site's server by URL: it neither reads the federation file
        # (a relative path would not even resolve in its directory) nor holds its secret.
        "LWFM_BUS_SITE": config.site,
        "LWFM_BUS_FEDERATION": "",
        "LWFM_BUS_FEDERATION_SECRET": "",
        # A tool inside a job is a client: it runs no agent or engine of its own.
        "LWFM_BUS_AGENTS": "",
        "LWFM_BUS_ENGINE": "",
        "LWFM_BUS_AUTOSTART": "off",
    }
    if config.user:
        env["LWFM_BUS_USER"] = config.user
    if config.password:
        env["LWFM_BUS_PASSWORD"] = config.password.get_secret_value()
    if config.token:
        env["LWFM_BUS_TOKEN"] = config.token.get_secret_value()
    for key, path in (
        ("LWFM_BUS_CREDS", config.creds_file),
        ("LWFM_BUS_TLS_CA", config.tls_ca_file),
        ("LWFM_BUS_TLS_CERT", config.tls_cert_file),
        ("LWFM_BUS_TLS_KEY", config.tls_key_file),
    ):
        if path:
            env[key] = str(path)
    return env


def current_job(env: Mapping[str, str] | None = None) -> JobContext:
    """This job's identity, from the environment its site gave it."""
    env = os.environ if env is None else env
    job_id = env.get("LWFM_JOB_ID")
    if not job_id:
        raise JobError("not inside an lwfm-bus job: LWFM_JOB_ID is not set")
    parents = tuple(p for p in env.get("LWFM_PARENT_IDS", "").split(",") if p)
    try:
        return JobContext(
            job_id=job_id,
            site=env.get("LWFM_SITE") or "local",
            workflow_id=env.get("LWFM_WORKFLOW_ID") or None,
            name=env.get("LWFM_JOB_NAME") or None,
            parent_ids=parents,
            attempt=env.get("LWFM_ATTEMPT") or 1,  # type: ignore[arg-type]  # pydantic parses the text
            attempt_of=env.get("LWFM_ATTEMPT_OF") or None,
            retry=RetryPolicy.model_validate_json(env["LWFM_RETRY"]) if env.get("LWFM_RETRY") else None,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "the job's identity"
        raise JobError(f"this job's identity in its environment is not valid: {where}: {error['msg']}") from None


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
