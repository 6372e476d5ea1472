"""Notifications: a run's end, POSTed as JSON to a webhook, once.

A ``notify`` block (a pipeline's, or :meth:`Bus.set_notify` for any workflow) becomes
triggers like any other, so it is judged by the engine, exactly once across replicas
and restarts, and whoever registered it may walk away:

* on failure: a ``workflow`` trigger fires on the first job of the run that ends
  FAILED or CANCELLED for good (a retried end does not count);
* on success: a join over the jobs whose completion completes the run (a pipeline's
  final jobs) fires when all of them are COMPLETE.

Either starts one small job on the ``local`` site, ``lwfm-bus notify-send``, which
reads the ended jobs from the bus, POSTs the JSON and withdraws the other trigger.
Being a job, the POST is retried by a retry policy when the webhook does not answer
2xx, its output is in ``lwfm-bus logs``, and the webhook address can be a
``secret:NAME`` reference that only the agent resolves (a Slack URL is a credential).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ._ids import derived_id
from ._jobs import JobDefn
from ._retry import RetryPolicy
from ._secrets import secret_name
from ._triggers import Downstream, JoinTrigger, Trigger, Upstream, WorkflowTrigger

__all__ = ["NOTIFY_URL_ENV", "Notify", "notify_triggers"]

NOTIFY_URL_ENV = "LWFM_NOTIFY_URL"
"""Where ``notify-send`` finds the webhook address (an env value: a ``secret:`` reference is resolved there)."""
log = logging.getLogger("lwfm_bus.client")
_SEND_RETRY = RetryPolicy(max_attempts=5, backoff_s=5.0, max_backoff_s=120.0)
_NO_SPACE = re.compile(r"^\S+$")


class Notify(BaseModel):
    """Tell a webhook when a run ends: on ``failure``, on ``success``, or at its ``end`` either way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str, StringConstraints(max_length=2048)] = Field(
        description="An http(s) URL that takes a JSON POST, or secret:NAME (resolved by the agent that sends it)."
    )
    on: Literal["failure", "success", "end"] = Field(
        default="failure", description="failure (first failed or cancelled job), success (all done), or end."
    )

    @field_validator("url")
    @classmethod
    def _address(cls, value: str) -> str:
        if secret_name(value) is not None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or not _NO_SPACE.fullmatch(value):
            raise ValueError("give an http:// or https:// URL (or secret:NAME)")
        return value


def notify_triggers(
    notify: Notify, workflow_id: str, title: str, success_jobs: Sequence[str], python: str
) -> list[Trigger]:
    """The triggers that carry out ``notify`` for the run ``workflow_id``.

    Their ids are derived from the run and the jobs that complete it, so registering
    them again is a no-op, and a resumed run (whose renamed jobs complete it) gets
    triggers of its own.  The sending job is in a workflow of its own: cancelling the
    run must not cancel the message that says it was cancelled.
    """
    if secret_name(notify.url) is None:
        log.warning(
            "notify %s: a plain webhook address is stored on the bus with its triggers, and most webhooks' "
            "addresses are credentials: use secret:NAME instead (see 'lwfm-bus secret set')",
            title[:200],
        )
    fingerprint = hashlib.sha256("\x1f".join(success_jobs).encode()).hexdigest()[:16]
    ids = {outcome: derived_id(workflow_id, "notify", outcome, fingerprint) for outcome in ("failure", "success")}
    wanted: tuple[str, ...] = ("failure", "success") if notify.on == "end" else (notify.on,)
    if not success_jobs:
        wanted = tuple(w for w in wanted if w != "success")
    triggers: list[Trigger] = []
    for outcome in wanted:
        others = [ids[o] for o in wanted if o != outcome]
        argv = [python, "-m", "lwfm_bus", "notify-send", "--workflow", workflow_id, "--outcome", outcome]
        argv += ["--title", title[:200], *(a for other in others for a in ("--withdraw", other))]
        job = JobDefn(
            argv=tuple(argv), name=f"notify {title[:200]}: {outcome}", env={NOTIFY_URL_ENV: notify.url},
            retry=_SEND_RETRY,
        )  # fmt: skip
        downstream = Downstream(job=job, site="local", workflow_id=derived_id(workflow_id, "notify"))
        name = f"notify on {outcome}: {title[:200]}"
        if outcome == "failure":
            triggers.append(
                WorkflowTrigger(trigger_id=ids[outcome], name=name, watched_workflow=workflow_id, downstream=downstream)
            )
        else:
            ups = tuple(Upstream(job_id=j) for j in success_jobs)
            triggers.append(JoinTrigger(trigger_id=ids[outcome], name=name, upstreams=ups, downstream=downstream))
    return triggers
