"""Durable submission: a job belongs to the bus from the moment ``submit`` returns.

A submission (what to run, and who the job is) is stored in the ``LWFM_SUBMIT``
stream on ``lwfm-submit.<site>.<job>`` before ``submit`` returns; the site's agents
take it from there, so the job runs whether or not the submitter is still alive.

One job id is submitted once, ever: the message carries
``Nats-Expected-Last-Subject-Sequence: 0``, which the server refuses when the job's
subject already holds a submission (a create-if-absent, like a KV create), and a
``Nats-Msg-Id`` so that a retry whose acknowledgement was lost is recognised as a
duplicate instead of refused.  Both answers mean "already submitted": a no-op.

Whether any agent serves a site is one request on ``lwfm-agent.<site>.ping``: the
server answers "no responders" at once when none is subscribed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

import nats.errors
import nats.js.errors
from pydantic import BaseModel, ConfigDict, Field

from .._bus._eventbus import SUBMIT_STREAM, EventBus
from .._errors import PublishError
from .._jobs import JobContext, JobDefn
from .._subjects import Token, agent_subject, cancel_subject, submission_subject

__all__ = [
    "CancelRequest",
    "Submission",
    "agent_present",
    "cancel_requested",
    "request_cancel",
    "store_submission",
    "stored_submission",
]

log = logging.getLogger("lwfm_bus.submit")

# nats-server's error code for a failed Nats-Expected-Last-Subject-Sequence check.
_WRONG_LAST_SEQUENCE = 10071


class Submission(BaseModel):
    """One job for one site's agents: who it is and what to run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    ctx: JobContext = Field(description="The job's identity: id, site, workflow, name, parents.")
    defn: JobDefn = Field(description="What to run.")
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    submitted_by: Token = Field(default="local", description="The site that submitted it.")


class CancelRequest(BaseModel):
    """A request to stop one job, kept until an agent of its site acts on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    job_id: Token
    site: Token
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    reason: str | None = Field(default=None, max_length=4000)


async def store_submission(bus: EventBus, submission: Submission) -> bool:
    """Store a submission; True if it is new, False if the job was submitted already.

    Raises :class:`PublishError` when the server does not take it (no stream captures
    the site's submissions, a permission refused it, the server did not answer).
    """
    ctx = submission.ctx
    subject = submission_subject(ctx.site, ctx.job_id)
    headers = {"Nats-Msg-Id": f"submit:{ctx.job_id}", "Nats-Expected-Last-Subject-Sequence": "0"}
    try:
        ack = await bus.jetstream.publish(
            subject, submission.model_dump_json().encode(), headers=headers, stream=SUBMIT_STREAM
        )
    except nats.js.errors.APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            return False
        raise PublishError(f"submission of job {ctx.job_id} to site {ctx.site!r} was refused: {exc}") from exc
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise PublishError(
            f"submission of job {ctx.job_id} to site {ctx.site!r} was not acknowledged: {exc!r}"
        ) from exc
    return not ack.duplicate


async def stored_submission(bus: EventBus, site: str, job_id: str) -> Submission | None:
    """The submission of ``job_id`` as the server keeps it (None if it has none, or no longer).

    A retry is made from it: the next attempt runs what the failed one ran, as it was
    stored, not as some process remembers it.
    """
    try:
        raw = await bus.jetstream.get_msg(SUBMIT_STREAM, subject=submission_subject(site, job_id))
    except nats.js.errors.NotFoundError:
        return None
    return Submission.model_validate_json(raw.data or b"")


async def request_cancel(bus: EventBus, ctx: JobContext, reason: str | None = None) -> None:
    """Store a request to stop ``ctx``'s job; every agent of its site hears of it."""
    request = CancelRequest(job_id=ctx.job_id, site=ctx.site, reason=reason)
    try:
        await bus.jetstream.publish(
            cancel_subject(ctx.site, ctx.job_id),
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"cancel:{ctx.job_id}"},
            stream=SUBMIT_STREAM,
        )
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise PublishError(f"the cancel request of job {ctx.job_id} was not acknowledged: {exc!r}") from exc


async def cancel_requested(bus: EventBus, site: str, job_id: str) -> bool:
    """Whether someone asked to stop this job (asked by an agent before it starts one)."""
    try:
        await bus.jetstream.get_msg(SUBMIT_STREAM, subject=cancel_subject(site, job_id))
    except nats.js.errors.NotFoundError:
        return False
    return True


async def agent_present(bus: EventBus, site: str, timeout: float = 1.0) -> bool:
    """Whether an agent of ``site`` is connected now (a slow answer counts as yes)."""
    try:
        await bus.nats.request(agent_subject(site, "ping"), b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return False
    except (nats.errors.TimeoutError, TimeoutError):
        return True  # someone is there but busy: do not cry wolf
    return True
