"""Handing jobs to their sites' agents: what ``Bus.submit`` and the trigger engine share.

Dispatching a job is storing its submission (:mod:`._submit`) and saying READY and
PENDING; the site's agents do the rest.  The :class:`Dispatcher` adds what both
callers need around that: refusing a site no agent serves and nobody configured (a
likely typo) or one this federation member may not submit to, resolving workspace
names for the target site, warning when no agent serves a site, and reporting a job
that could not be submitted -- at the site that speaks for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from .._bus._connect import OUTAGE
from .._bus._eventbus import EventBus
from .._errors import ConfigError, LwfmBusError
from .._jobs import JobContext, JobDefn
from .._states import JobState
from ._registry import SiteSpec
from ._report import Reporter
from ._submit import Submission, agent_present, store_submission

__all__ = ["NOT_TAKEN", "Dispatcher"]

log = logging.getLogger("lwfm_bus.client")

# An agent seen this recently is not asked again before the next submission to its site.
_AGENT_SEEN_S = 2.0
# What the dispatcher says of a job waiting in the stream (its PENDING's native_state).
_QUEUED = "queued"
_NO_AGENT = "no agent"
NOT_TAKEN = frozenset({_QUEUED, _NO_AGENT})
"""A job whose latest native state is one of these has not been taken by any agent yet."""


class Dispatcher:
    """Submits jobs for one bus: ``Bus.submit`` and the engine's firings go through here."""

    def __init__(
        self,
        bus: EventBus,
        *,
        site_specs: Callable[[], Mapping[str, SiteSpec]],
        resolve: Callable[[JobDefn, str], Awaitable[JobDefn]],
    ) -> None:
        self._bus = bus
        self._site_specs = site_specs
        self._resolve = resolve
        self._agent_seen: dict[str, tuple[float, bool]] = {}
        self._no_agent_said: dict[str, float] = {}

    async def agent_present(self, site: str) -> bool:
        """Whether an agent serves ``site``; an answer is reused for a moment (the engine submits in bursts)."""
        loop = asyncio.get_running_loop()
        seen = self._agent_seen.get(site)
        if seen is not None and loop.time() - seen[0] < _AGENT_SEEN_S:
            return seen[1]
        present = await agent_present(self._bus, site)
        self._agent_seen[site] = (loop.time(), present)
        return present

    async def submit_job(
        self, ctx: JobContext, defn: JobDefn, *, agent: bool | None = None, always_warn: bool = False
    ) -> bool:
        """Resolve workspace names, store the submission, say READY and PENDING; False if known already.

        The engine dispatches through this too: a firing is one stored submission.  "No
        agent" is said for every job a user submits, and once a minute per site otherwise.
        """
        member = self._bus.federation
        if member is not None and not member.federation.may_submit(member.site, ctx.site):
            # The hub's server would refuse it too; said here at once, and clearly.
            fed = member.federation
            names = {n for other in fed.sites for n in fed.names_of(other)}
            why = "no member speaks for it" if ctx.site not in names else "not in its submit_to"
            raise ConfigError(
                f"site {member.site!r} may not submit jobs to site {ctx.site!r} ({why}; see the federation file)"
            )
        if agent is None:
            agent = await self.agent_present(ctx.site)
        if not agent and member is None and ctx.site not in self._site_specs():
            # Agents of a site this bus does not configure may run anywhere; but with none
            # answering either, the name is most likely a typo: refused, nothing stored.
            known = ", ".join(sorted(self._site_specs()))
            raise ConfigError(
                f"unknown site {ctx.site!r} (configured: {known}; see {self._bus.config.sites_path()}), "
                "and no agent serves it"
            )
        defn = await self._resolve(defn, ctx.site)  # before anything: a bad reference starts nothing
        if defn.retry is not None and ctx.retry is None:
            ctx = ctx.model_copy(update={"retry": defn.retry})  # whoever reports its end decides alike
        submission = Submission(ctx=ctx, defn=defn, submitted_by=self._bus.config.site)
        if not await store_submission(self._bus, submission):
            log.info("job %s was already submitted; not submitting it again", ctx.job_id)
            return False
        if not self.speaks_for(ctx.site):
            return True  # another federation member's job: its own agents report its states there
        try:
            await self._say_submitted(ctx, agent, always_warn)
        except LwfmBusError as exc:
            # Stored is what matters: the job runs and its agent reports it.  Raising now
            # would invite a retry under another id.
            log.warning(
                "job %s is submitted, but its READY/PENDING were not recorded: %s", ctx.job_id, exc, extra=OUTAGE
            )
        return True

    async def _say_submitted(self, ctx: JobContext, agent: bool, always_warn: bool) -> None:
        reporter = Reporter(self._bus, source="api", deadline_s=3 * self._bus.config.request_timeout_s)
        if agent:
            # Both at once (one round trip); the state order sorts them whatever lands first.
            # PENDING has its own id: the site's (a scheduler's queue, with its native id) is news after it.
            await asyncio.gather(
                reporter.report(ctx, JobState.READY),
                reporter.report(
                    ctx,
                    JobState.PENDING,
                    native_state=_QUEUED,
                    native_info=f"waiting for a free slot of site {ctx.site!r} (its max_concurrent)",
                    variant="queued",
                ),
            )
            return
        await reporter.report(ctx, JobState.READY)
        hint = f"no agent serves site {ctx.site!r}; start one with 'lwfm-bus agent --site {ctx.site}' or 'lwfm-bus up'"
        now = asyncio.get_running_loop().time()
        if always_warn or now - self._no_agent_said.get(ctx.site, -60.0) >= 60.0:
            self._no_agent_said[ctx.site] = now
            log.warning("job %s waits: %s", ctx.job_id, hint)
        await reporter.report(ctx, JobState.PENDING, native_state=_NO_AGENT, native_info=hint, variant="no-agent")

    def speaks_for(self, site: str) -> bool:
        """Whether this process may publish events of ``site`` (in a federation: its own names and local)."""
        member = self._bus.federation
        return member is None or site in (*member.federation.names_of(member.site), "local")

    async def report_unsubmitted(self, ctx: JobContext, reason: str) -> None:
        """A job that could not be submitted ends FAILED, so whoever waits on it learns why.

        Reported at this bus's own site when that is not the job's site (a federation
        member cannot speak for another), and never raised: a trigger must end ``failed``
        whatever happens to this report.
        """
        if not self.speaks_for(ctx.site):
            reason = f"to site {ctx.site!r}: {reason}"
            ctx = ctx.model_copy(update={"site": self._bus.config.site})
        ctx = ctx.model_copy(update={"retry": None})  # it never ran: nothing to run again
        reporter = Reporter(self._bus, source="engine", deadline_s=3 * self._bus.config.request_timeout_s)
        try:
            await reporter.report(ctx, JobState.FAILED, native_info=f"dispatch failed: {reason}"[:4000])
        except LwfmBusError as exc:
            log.error("job %s: its failed dispatch could not be reported: %s", ctx.job_id, exc)
