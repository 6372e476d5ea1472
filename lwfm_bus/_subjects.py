"""The subject hierarchy: where every event lives on NATS.

All events share one shape so that an outsider can filter by position alone::

    lwfm.<site>.<kind>.<workflow>.<entity>.<detail>

=========  ===========  =====================  ============================
kind       entity       detail                 example
=========  ===========  =====================  ============================
job        job id       canonical state        ``lwfm.hpc1.job.wf1.j42.FAILED``
data       producer job ``arrived``            ``lwfm.hpc1.data.wf1.j42.arrived``
trigger    trigger id   registered/fired/...   ``lwfm.local.trigger.wf1.t7.fired``
site       ``_``        ``heartbeat``          ``lwfm.hpc1.site._._.heartbeat``
workspace  workspace    define/add/remove/...  ``lwfm.local.workspace._.ws1.add``
=========  ===========  =====================  ============================

A missing workflow or job is written ``_``.  Because the workflow is always the 4th
token and the entity the 5th, ``lwfm.*.*.wf1.>`` is every event of workflow ``wf1``.

Dead letters live outside the stream's ``lwfm.>`` capture, under ``lwfm-dlq.<reason>``,
so a poisoned message can never be consumed twice by the engine.

What must *happen* lives beside what happened, in its own stream (``LWFM_SUBMIT``):
``lwfm-submit.<site>.<job>`` holds one job's submission for a site's agents, and
``lwfm-cancel.<site>.<job>`` a request to stop it.  Agents answer
``lwfm-agent.<site>.ping`` (request/reply, so "no agent" is known at once) and take
their submissions through ``lwfm-agent.<site>.deliver``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

from ._errors import InvalidTokenError

__all__ = [
    "AGENT_ROOT",
    "CANCEL_ROOT",
    "DLQ_ROOT",
    "NONE_TOKEN",
    "ROOT",
    "SUBMIT_ROOT",
    "Token",
    "agent_subject",
    "cancel_subject",
    "check_token",
    "data_filter",
    "dead_letter_subject",
    "job_filter",
    "subject_for",
    "submission_subject",
    "workflow_filter",
]

ROOT = "lwfm"
DLQ_ROOT = "lwfm-dlq"
SUBMIT_ROOT = "lwfm-submit"
CANCEL_ROOT = "lwfm-cancel"
AGENT_ROOT = "lwfm-agent"
NONE_TOKEN = "_"  # noqa: S105 - a placeholder token, not a secret

# Tokens are a conservative character set: any tool, in any language, can put them
# in a subject, a file name and a URL without quoting.
_TOKEN = re.compile(r"^[A-Za-z0-9_\-:@+=~^]{1,128}$")

Token = Annotated[str, StringConstraints(pattern=_TOKEN.pattern)]
"""A string usable as one subject token (site names, job, workflow and trigger ids)."""


def check_token(value: str, what: str = "token") -> str:
    """Return ``value`` if it is usable as one subject token, else raise.

    Rejected: empty, longer than 128 characters, or containing anything outside
    ``A-Z a-z 0-9 _ - : @ + = ~ ^`` -- in particular ``.``, ``*``, ``>`` and whitespace,
    which would change the meaning of a subject or of a wildcard filter.
    """
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidTokenError(
            f"invalid {what} {value!r}: use 1-128 characters of letters, digits and _-:@+=~^ "
            "(no '.', '*', '>' or whitespace)"
        )
    return value


def subject_for(site: str, kind: str, workflow: str | None, entity: str | None, detail: str) -> str:
    """Build the subject of one event, validating every token."""
    return ".".join(
        (
            ROOT,
            check_token(site, "site name"),
            kind,
            check_token(workflow or NONE_TOKEN, "workflow id"),
            check_token(entity or NONE_TOKEN, "entity id"),
            check_token(detail, "subject detail"),
        )
    )


def workflow_filter(workflow: str) -> str:
    """Every event of one workflow, on any site."""
    return f"{ROOT}.*.*.{check_token(workflow, 'workflow id')}.>"


def job_filter(job_id: str) -> str:
    """Every event about or produced by one job (status and data), on any site."""
    return f"{ROOT}.*.*.*.{check_token(job_id, 'job id')}.*"


def data_filter(site: str = "*") -> str:
    """Every data arrival of one site (``*`` for all sites)."""
    if site != "*":
        check_token(site, "site name")
    return f"{ROOT}.{site}.data.>"


def dead_letter_subject(reason: str, stream: str = NONE_TOKEN, seq: int | None = None) -> str:
    """Where a message that is not a usable event is parked: by reason, then by where it was found.

    ``lwfm-dlq.<reason>.<stream>.<sequence>``: one subject per stored message, so parking
    it again (another reader, a replay next month) is refused by the server.
    """
    where = str(seq) if seq is not None else NONE_TOKEN
    return f"{DLQ_ROOT}.{check_token(reason, 'reason')}.{check_token(stream, 'stream')}.{where}"


def submission_subject(site: str, job_id: str) -> str:
    """Where one job's submission to a site is stored (one message per job, ever)."""
    return f"{SUBMIT_ROOT}.{check_token(site, 'site name')}.{check_token(job_id, 'job id')}"


def cancel_subject(site: str, job_id: str) -> str:
    """Where a request to stop one job is stored for its site's agents."""
    return f"{CANCEL_ROOT}.{check_token(site, 'site name')}.{check_token(job_id, 'job id')}"


def agent_subject(site: str, what: str) -> str:
    """A site's agents' own subjects: ``ping`` (are you there?) and ``deliver`` (submissions)."""
    return f"{AGENT_ROOT}.{check_token(site, 'site name')}.{check_token(what, 'agent subject')}"
