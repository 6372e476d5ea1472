"""Registering and withdrawing triggers: the part of :class:`~lwfm_bus.Bus` that says what should happen.

Kept apart from the client's connection, sites and queries (``_client``) so each stays
readable; :class:`Bus` inherits it.  Everything here publishes trigger events (and
reads the index for what is registered): the engine, not this process, judges them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

from ._bus._eventbus import EventBus
from ._errors import TriggerError
from ._events import TriggerCancelled, TriggerRegistered, make_event
from ._index._projection import JobIndex, TriggerRecord
from ._jobs import JobDefn, Workflow
from ._notify import Notify, notify_triggers
from ._secrets import credential_like
from ._states import JobState
from ._subjects import check_token
from ._triggers import DataTrigger, Downstream, JobTrigger, JoinTrigger, Match, ScheduleTrigger, Trigger, Upstream

__all__ = ["JobLike", "TriggerApi"]

log = logging.getLogger("lwfm_bus.client")


class JobLike(Protocol):
    """Anything with a job id: a :class:`~lwfm_bus.Job`, a sync job, a status or a record."""

    @property
    def job_id(self) -> str: ...


class TriggerApi(EventBus):
    """Triggers, as :class:`~lwfm_bus.Bus` offers them (see the README's "Triggers")."""

    def __init__(self, nc: Any, config: Any) -> None:
        super().__init__(nc, config)
        self._warned_credentials: set[str] = set()  # env names warned about at registration

    async def index(self) -> JobIndex:
        raise NotImplementedError  # the client's: the index of this bus

    def is_local_site(self, site: str) -> bool:
        raise NotImplementedError  # the client's: whether a site is this machine

    def _here(self, defn: JobDefn, site: str) -> JobDefn:
        """A job for this machine with no working directory runs where it was submitted from.

        It runs in an agent's process now, whose directory is the agent's: without this, a
        relative path in a job would mean something else than where the user typed it.
        """
        if defn.cwd is not None or not self.is_local_site(site):
            return defn
        return defn.model_copy(update={"cwd": os.getcwd()})

    async def add_trigger(self, trigger: Trigger) -> Trigger:
        """Register a trigger (validated already: a bad one never reaches the bus).

        A plain ``env`` value whose name looks like a credential is warned about (once per
        name and process): it is stored in the registration and travels with it.
        """
        jobs = [
            trigger.downstream.job,
            *([trigger.fallback.job] if isinstance(trigger, JoinTrigger) and trigger.fallback else []),
        ]
        plain = {n for job in jobs for n in credential_like(job.env)}
        for name in sorted(plain - self._warned_credentials):
            self._warned_credentials.add(name)
            log.warning(
                "trigger %s: env %s holds a plain value that looks like a credential; it is stored on the bus "
                "with the trigger: use secret:NAME instead (see 'lwfm-bus secret set')",
                trigger.trigger_id, name,
            )  # fmt: skip
        data = TriggerRegistered(
            trigger_id=trigger.trigger_id, site=self.config.site, workflow_id=trigger.workflow_id, definition=trigger
        )
        await self.publish(
            make_event(data, source=f"/sites/{self.config.site}/api", id=f"registered:{trigger.trigger_id}")
        )
        return trigger

    async def set_job_trigger(
        self,
        downstream: JobDefn,
        upstream: str | JobLike | Iterable[str | JobLike],
        *,
        site: str = "local",
        states: JobState | Iterable[JobState] = JobState.COMPLETE,
        match: Match | str = Match.EXACT,
        mode: str = "all",
        at_least: int | None = None,
        within_s: float | None = None,
        fallback: JobDefn | None = None,
        fallback_site: str | None = None,
        job_id: str | None = None,
        workflow: Workflow | str | None = None,
        trigger_id: str | None = None,
    ) -> Trigger:
        """Run ``downstream`` after ``upstream`` (one job: 3b) or after a set of jobs (a join: 3c).

        ``job_id`` fixes the id of the job that will run, so it can be waited on now.
        """
        wanted = (states,) if isinstance(states, JobState) else tuple(states)
        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        target = Downstream(job=self._here(downstream, site), site=site, job_id=job_id, workflow_id=wf_id)
        common: dict[str, Any] = {"downstream": target, "workflow_id": wf_id}
        if trigger_id is not None:
            common["trigger_id"] = trigger_id
        if isinstance(upstream, str) or not isinstance(upstream, Iterable):
            ups = [Upstream(job_id=_job_id(upstream), states=wanted, match=Match(match))]
            single = mode == "all" and at_least is None and within_s is None and fallback is None
        else:
            ups = [Upstream(job_id=_job_id(u), states=wanted, match=Match(match)) for u in upstream]
            single = False
        trigger: Trigger
        if single:
            trigger = JobTrigger(upstream=ups[0], **common)
        else:
            fb_site = fallback_site or site
            fb = Downstream(job=self._here(fallback, fb_site), site=fb_site, workflow_id=wf_id) if fallback else None
            trigger = JoinTrigger.model_validate(
                {"upstreams": ups, "mode": mode, "at_least": at_least, "within_s": within_s, "fallback": fb, **common}
            )
        return await self.add_trigger(trigger)

    async def set_data_trigger(
        self,
        downstream: JobDefn,
        signature: Mapping[str, Any],
        *,
        site: str = "local",
        fire: str = "once",
        source_site: str | None = None,
        source_workflow: str | None = None,
        existing: str = "include",
        job_id: str | None = None,
        workflow: Workflow | str | None = None,
        trigger_id: str | None = None,
    ) -> Trigger:
        """Run ``downstream`` when data with metadata matching ``signature`` arrives (3d)."""
        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        fields: dict[str, Any] = {
            "downstream": Downstream(job=self._here(downstream, site), site=site, job_id=job_id, workflow_id=wf_id),
            "workflow_id": wf_id,
            "signature": dict(signature),
            "fire": fire,
            "source_site": source_site,
            "source_workflow": source_workflow,
            "existing": existing,
        }
        if trigger_id is not None:
            fields["trigger_id"] = trigger_id
        return await self.add_trigger(DataTrigger.model_validate(fields))

    async def set_notify(
        self,
        workflow: Workflow | str,
        url: str,
        *,
        on: Literal["failure", "success", "end"] = "failure",
        jobs: Iterable[str | JobLike] = (),
        title: str | None = None,
    ) -> list[Trigger]:
        """POST a JSON message to ``url`` when ``workflow`` fails (its first job that ends FAILED or
        CANCELLED for good), succeeds (every one of ``jobs`` COMPLETE), or at its ``end`` either way.

        Once per run, however many engines judge it; sent by a job on ``local``, whose retry
        policy sends again while the webhook does not answer 2xx.  ``url`` may be
        ``secret:NAME``, resolved by the agent that sends it.  Failures count from now on.
        """
        wf_id = check_token(workflow.workflow_id if isinstance(workflow, Workflow) else workflow, "workflow id")
        finals = [_job_id(j) for j in jobs]
        if on != "failure" and not finals:
            raise ValueError(f"on={on!r}: name the jobs whose completion completes the workflow (jobs=...)")
        notify = Notify(url=url, on=on)
        triggers = notify_triggers(notify, wf_id, title or wf_id, finals, sys.executable)
        for trigger in triggers:
            await self.add_trigger(trigger)
        return triggers

    async def set_schedule(
        self,
        downstream: JobDefn,
        *,
        cron: str | None = None,
        interval_s: int | None = None,
        tz: str = "UTC",
        start: datetime | None = None,
        end: datetime | None = None,
        catchup: bool = False,
        site: str = "local",
        workflow: Workflow | str | None = None,
        trigger_id: str | None = None,
    ) -> Trigger:
        """Run ``downstream`` at each tick of a cron expression or an interval: a new job per tick.

        Each tick's job id is derived from the trigger id and the tick, so a tick starts
        one job however many engines run; ``catchup`` says whether the ticks missed while
        no engine ran are started (the latest 1000), or only the latest of them.
        """
        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        fields: dict[str, Any] = {
            "downstream": Downstream(job=self._here(downstream, site), site=site, workflow_id=wf_id),
            "workflow_id": wf_id,
            "cron": cron,
            "interval_s": interval_s,
            "tz": tz,
            "start": start,
            "end": end,
            "catchup": catchup,
        }
        if trigger_id is not None:
            fields["trigger_id"] = trigger_id
        return await self.add_trigger(ScheduleTrigger.model_validate(fields))

    async def cancel_trigger(self, trigger_id: str, reason: str | None = None) -> None:
        """Withdraw a trigger: events judged from now on no longer fire it."""
        record = await (await self.index()).trigger(trigger_id)
        if record is None:
            raise TriggerError(f"no trigger {trigger_id!r} is known to this bus")
        await self._withdraw(record, reason)

    async def triggers(
        self, *, workflow: Workflow | str | None = None, state: str | None = None
    ) -> list[TriggerRecord]:
        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        return await (await self.index()).triggers(workflow_id=wf_id, state=state)

    async def trigger(self, trigger_id: str) -> TriggerRecord | None:
        return await (await self.index()).trigger(trigger_id)

    async def _withdraw(self, record: TriggerRecord, reason: str | None) -> None:
        data = TriggerCancelled(
            trigger_id=record.trigger_id, site=self.config.site, workflow_id=record.workflow_id, reason=reason
        )
        event_id = f"cancelled:{record.trigger_id}"
        await self.publish(make_event(data, source=f"/sites/{self.config.site}/api", id=event_id))


def _job_id(job: str | JobLike | Any) -> str:
    if isinstance(job, str):
        return check_token(job, "job id")
    found = getattr(job, "job_id", None)
    if not isinstance(found, str):
        raise TriggerError(f"not a job or a job id: {job!r}")
    return check_token(found, "job id")
