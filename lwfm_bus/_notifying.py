"""Sending one notification, inside the job a notify trigger starts (``lwfm-bus notify-send``).

The job learns which jobs ended from its own identity (``LWFM_PARENT_IDS``: the
failed job, or the jobs that completed the run), reads their ends from the stream --
no index, no engine, as a job publishes through the event bus alone -- and POSTs one
JSON document.  It never prints the webhook's address, which may be a secret.  A
webhook that does not answer 2xx fails the job, and the job's retry policy sends
again: delivery is at least once, each copy with the same ``id`` (and
``Idempotency-Key``).  The other notify trigger of the run is withdrawn first, since the
run has ended; the POST is the last step, so a message the webhook took is not sent again
for a failure after it.  Redirects are not followed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio

from ._bus._connect import open_event_bus
from ._bus._eventbus import EventBus
from ._config import load_config
from ._errors import ConfigError, JobError
from ._events import JobStatus, TriggerCancelled, make_event
from ._identity import current_job
from ._notify import NOTIFY_URL_ENV
from ._retry import MAX_ATTEMPTS
from ._secrets import secret_name
from ._waiting import stored_end

__all__ = ["send_notification"]

_MOST_JOBS = 20  # jobs described in one message (a success of 10,000 jobs names the first few)
_TIMEOUT_S = 15.0


async def send_notification(
    env: Mapping[str, str], workflow_id: str, outcome: str, title: str, withdraw: Sequence[str]
) -> str:
    """POST the run's end to the webhook in ``env``; a line saying what the webhook answered."""
    url = env.get(NOTIFY_URL_ENV, "")
    if not url:
        raise ConfigError(f"{NOTIFY_URL_ENV} is not set: this command is started by a notify trigger")
    if secret_name(url) is not None:
        raise ConfigError(f"the webhook address is {url}, which this site's secret store does not hold")
    if urlsplit(url).scheme not in ("http", "https"):  # a secret's value is checked only now
        raise ConfigError("the webhook address is not an http:// or https:// URL")
    ctx = current_job(env)
    config = load_config(env)
    async with open_event_bus(config, name="lwfm-bus notify-send") as bus:
        for trigger_id in withdraw:  # the run has ended: its other notification can no longer be due
            why = f"the run ended ({outcome}) and is notified"
            data = TriggerCancelled(trigger_id=trigger_id, site=config.site, workflow_id=None, reason=why)
            await bus.publish(make_event(data, source=f"/sites/{config.site}/notify", id=f"cancelled:{trigger_id}"))
        jobs = [j for j in [await _final_end(bus, job_id) for job_id in ctx.parent_ids[:_MOST_JOBS]] if j]
        payload = _payload(ctx.logical_id, workflow_id, outcome, title, jobs, len(ctx.parent_ids))
    # Last, and nothing after it can fail the job: a POST the webhook took is not sent again.
    return await anyio.to_thread.run_sync(_post, url, payload)


async def _final_end(bus: EventBus, job_id: str) -> JobStatus | None:
    """The end of ``job_id``'s final attempt, as the stream holds it (None if it holds none)."""
    current = job_id
    for _ in range(MAX_ATTEMPTS):
        end = await stored_end(bus, current)
        if end is None or end.retry_next is None:
            return end
        current = end.retry_next
    return None


def _payload(
    message_id: str, workflow_id: str, outcome: str, title: str, jobs: list[JobStatus], count: int
) -> dict[str, Any]:
    if outcome == "failure":
        first = jobs[0] if jobs else None
        what = f"job {first.name or first.job_id} {first.state.value}" if first else "a job failed"
        if first is not None and first.exit_code is not None:
            what += f" (exit {first.exit_code})"
        text = f"lwfm-bus: run {workflow_id} of {title} failed: {what}"
    else:
        text = f"lwfm-bus: run {workflow_id} of {title} completed ({count} final job{'s' if count != 1 else ''})"
    return {
        "id": message_id,  # the same in every attempt at sending it: a receiver can drop a repeat
        "type": "lwfm.workflow.ended",
        "outcome": outcome,
        "workflow_id": workflow_id,
        "title": title,
        "time": datetime.now(UTC).isoformat(),
        "text": text,  # what chat webhooks (Slack, Mattermost...) show
        "jobs": [
            {
                "job_id": j.job_id,
                "name": j.name,
                "site": j.site,
                "state": j.state.value,
                "exit_code": j.exit_code,
                "native_state": j.native_state,
                "info": j.native_info or j.info,
                "attempt": j.attempt or 1,
            }
            for j in jobs
        ],
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (not delivered), never followed: the agent's machine must not be sent
    elsewhere, nor a POST turned into a GET of some other address, by whoever answers the webhook."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post(url: str, payload: dict[str, Any]) -> str:
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked to be http(s) (see Notify)
        url,
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": "lwfm-bus",
            "Idempotency-Key": str(payload["id"]),
        },
        method="POST",
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=_TIMEOUT_S) as response:
            return f"the webhook answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        raise JobError(
            f"the webhook answered HTTP {exc.code}: not delivered (sent again by the retry policy)"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JobError(f"the webhook could not be reached ({reason}): not delivered") from None
