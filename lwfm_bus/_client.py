"""``connect()`` and :class:`Bus`: the Python API for events, workflows and jobs.

Submitting a job stores it on the bus (:mod:`._sites._submit`); the site's agents run
it, whether or not this process is still alive.  A process that is asked to serve
sites (``BusConfig.agents``) runs their agents itself, as ``lwfm-bus up`` does.  The
bus also keeps the SQLite index that answers status queries, and opens site adapters
as a *client* only (to read logs, copy data): it never runs or adopts jobs that way.
Waiting on a job never polls: it subscribes to the job's subject from the start of
the stream, so a job that already finished answers at once and one still running
wakes the waiter with its terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import nats.js.errors

from ._bus._connect import open_event_bus
from ._bus._eventbus import STREAM
from ._bus._fedkeeper import keeping_sources
from ._config import BusConfig, load_config
from ._errors import ConfigError, JobTimeoutError, SiteError, UnknownJobError
from ._events import (
    EventDecodeError,
    JobStatus,
    SiteHeartbeatEvent,
    WorkflowDefined,
    decode_event,
    make_event,
    new_id,
)
from ._identity import bus_env
from ._index._projection import JobIndex, JobRecord, WorkflowRecord
from ._jobs import JobContext, JobDefn, Workflow
from ._meta import Metadata
from ._query import DataPage, DataQuery, DataRecord
from ._repo._repository import DataRepo, Provenance
from ._repo._workspaces import Workspaces
from ._secrets import SecretStore, redact
from ._sites._dispatch import NOT_TAKEN, Dispatcher
from ._sites._protocol import LogStream, SiteAdapter, SiteRuntime
from ._sites._registry import SiteSpec, load_sites
from ._sites._report import Reporter
from ._sites._submit import request_cancel
from ._states import JobState
from ._subjects import ROOT, check_token
from ._triggerapi import TriggerApi
from ._waiting import never_runs, wait_for_end

if TYPE_CHECKING:
    # Imported where used: a job's ``step-exec`` connects through here and needs neither
    # the bundle code nor a site agent (issue #21: start-up of what every job runs).
    from ._bus._bundle import ImportReport
    from ._engine._replica import Engine
    from ._sites._agent import SiteAgent

__all__ = ["Bus", "Job", "WorkflowStop", "connect"]

log = logging.getLogger("lwfm_bus.client")

# An agent seen this recently is not asked again before the next submission to its site.
_AGENT_SEEN_S = 2.0


@dataclass(frozen=True)
class Job:
    """A handle on a submitted job."""

    job_id: str
    site: str
    workflow_id: str | None
    bus: Bus

    async def wait(self, timeout: float | None = None) -> JobStatus:
        return await self.bus.wait(self.job_id, timeout=timeout)

    async def status(self) -> JobRecord:
        return await self.bus.status(self.job_id)

    async def cancel(self) -> None:
        await self.bus.cancel(self.job_id)

    async def logs(self, stream: LogStream = "stdout") -> bytes:
        return await self.bus.logs(self.job_id, stream)


class Bus(TriggerApi):
    """A connection to an lwfm bus.  Obtain one with ``async with lwfm_bus.connect() as bus``."""

    def __init__(self, nc: Any, config: BusConfig) -> None:
        super().__init__(nc, config)
        self._specs: dict[str, SiteSpec] | None = None
        self._adapters: dict[str, SiteAdapter] = {}
        # One lock per site: a site that takes a minute to reach (a host down) must never
        # hold up opening another (issue 22: one unreachable site delayed every local job).
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        self._index: JobIndex | None = None
        self._index_lock = asyncio.Lock()
        self._agents: dict[str, SiteAgent] = {}
        self._engine: Engine | None = None
        self._repo = DataRepo(self)
        self.workspaces = Workspaces(self)
        """The shared map of logical file names (see :class:`~lwfm_bus.Workspaces`)."""
        self.dispatcher = Dispatcher(self, site_specs=self.site_specs, resolve=self.workspaces.resolve_job)
        """Hands jobs to their sites' agents (``submit`` and the trigger engine use it)."""

    async def _aclose(self) -> None:
        for name, adapter in list(self._adapters.items()):
            try:
                await adapter.close()
            except Exception:
                log.exception("closing site %s failed", name)
        self._adapters.clear()
        if self._index is not None:
            await self._index.__aexit__(None, None, None)
            self._index = None

    @property
    def engine(self) -> Engine | None:
        """The trigger engine replica this process runs, if any (metrics read its counters)."""
        return self._engine

    @property
    def agents(self) -> tuple[SiteAgent, ...]:
        """The site agents this process runs (metrics and readiness look at them)."""
        return tuple(self._agents.values())

    # ------------------------------------------------------------------ sites

    def site_specs(self) -> dict[str, SiteSpec]:
        if self._specs is None:
            self._specs = load_sites(self.config.sites_path(), home_site=self.config.site)  # its adapters only
        return self._specs

    def served_sites(self) -> list[SiteSpec]:
        """The sites whose agents this process runs (``BusConfig.agents``; ``*``: every site served by ``up``)."""
        specs = self.site_specs()
        wanted: list[str] = []
        for name in self.config.agents:
            if name == "*":
                wanted += [n for n, spec in specs.items() if spec.served_by_up]
            elif name not in specs:
                known = ", ".join(sorted(specs))
                raise ConfigError(f"unknown site {name!r} (configured: {known}; see {self.config.sites_path()})")
            else:
                wanted.append(name)
        return [specs[name] for name in dict.fromkeys(wanted)]

    def is_local_site(self, site: str) -> bool:
        """Whether ``site`` is this machine (its adapter is ``local``): its paths can be read here."""
        spec = self.site_specs().get(site)
        return spec is not None and spec.adapter == "local"

    def job_env(self) -> dict[str, str]:
        """How a launched job reaches this bus by itself (passed in its environment)."""
        return bus_env(self.config, self.connected_url)

    async def site(self, name: str) -> SiteAdapter:
        """A configured site's adapter, opened as a client: to read logs and copy data.

        Jobs run only through the site's agents; an adapter opened here never runs,
        adopts or watches one.
        """
        async with self._adapter_locks.setdefault(name, asyncio.Lock()):
            if name in self._adapters:
                return self._adapters[name]
            spec = self.site_specs().get(name)
            if spec is None:
                known = ", ".join(sorted(self.site_specs()))
                raise ConfigError(f"unknown site {name!r} (configured: {known}; see {self.config.sites_path()})")
            if spec.broken is not None or spec.adapter_class is None:
                raise ConfigError(spec.broken or f"site {name!r} has no adapter")
            runtime = SiteRuntime(
                site=name,
                state_dir=self.config.home / "sites" / name,
                reporter=Reporter(self, source="client"),
                job_env=self.job_env(),
                role="client",
            )
            try:
                adapter: SiteAdapter = spec.adapter_class(spec.options, runtime)
                await adapter.open()
            except ConfigError:
                raise
            except Exception as exc:
                raise SiteError(f"site {name!r} ({spec.adapter}) failed to open: {exc}") from exc
            self._adapters[name] = adapter
            return adapter

    async def _agent_adapter(self, name: str) -> SiteAdapter | None:
        """The adapter this process's own agent of ``name`` drives (once open), if it runs one."""
        agent = self._agents.get(name)
        return None if agent is None else await agent.opened()

    # ------------------------------------------------------------------ index

    async def index(self) -> JobIndex:
        async with self._index_lock:  # concurrent first queries must open one index, not several
            if self._index is None:
                self._index = await JobIndex(self.config.home / "index.sqlite", self).__aenter__()
            return self._index

    # ------------------------------------------------------------------ workflows

    async def define_workflow(
        self, name: str | None = None, properties: Metadata | None = None, *, workflow_id: str | None = None
    ) -> Workflow:
        """Create (or update) a named group of jobs with properties."""
        wf = Workflow(workflow_id=workflow_id or new_id(), name=name, properties=dict(properties or {}))
        data = WorkflowDefined(workflow_id=wf.workflow_id, site=self.config.site, name=name, properties=wf.properties)
        await self.publish(make_event(data, source=f"/sites/{self.config.site}/api"))
        return wf

    async def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        return await (await self.index()).workflow(workflow_id)

    # ------------------------------------------------------------------ jobs

    async def submit(
        self,
        defn: JobDefn,
        *,
        site: str = "local",
        workflow: Workflow | str | None = None,
        parents: Iterable[str] = (),
        job_id: str | None = None,
    ) -> Job:
        """Store the job on the bus for its site's agents and return; its states arrive as events.

        The job runs whether or not this process lives on.  Submitting one job id
        again is a no-op.  When no agent serves the site, a warning says how to start
        one; the job waits PENDING until one does.
        """
        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        defn = self._here(defn, site)
        ctx = JobContext(
            job_id=check_token(job_id or new_id(), "job id"),
            site=check_token(site, "site name"),
            workflow_id=wf_id,
            name=defn.label(),
            parent_ids=tuple(parents),
        )
        await self.dispatcher.submit_job(ctx, defn, always_warn=True)
        return Job(job_id=ctx.job_id, site=site, workflow_id=wf_id, bus=self)

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobStatus:
        """The job's terminal status, woken by its event (it may have ended already).

        A job that a trigger was to start may never run: when every trigger that could
        start it has ended otherwise (expired, failed or cancelled), this raises
        :class:`JobWillNotRunError` naming the trigger and why, instead of waiting for ever.
        """
        return await wait_for_end(self, job_id, timeout, functools.partial(self._never_runs, job_id))

    async def _never_runs(self, job_id: str) -> None:
        """Raise :class:`JobWillNotRunError` once every trigger that could start ``job_id`` has ended otherwise."""
        await never_runs(self, self.index, job_id)

    async def site_health(self) -> dict[str, SiteHeartbeatEvent]:
        """Each site's health as its agents last said it, by site: the event's time is when it began.

        An agent publishes its site's health when it changes (UP; DEGRADED or DOWN with
        the reason), so the last heartbeat on a site's subject is how it is now.
        """
        try:
            info = await self.jetstream.stream_info(STREAM, subjects_filter=f"{ROOT}.*.site.*.*.heartbeat")
        except nats.js.errors.NotFoundError:
            return {}
        found: dict[str, SiteHeartbeatEvent] = {}
        for subject in sorted(info.state.subjects or {})[:_MAX_SITES]:
            try:
                raw = await self.jetstream.get_last_msg(STREAM, subject)
                event = decode_event(raw.data or b"", self.config.max_event_bytes, subject)
            except (nats.js.errors.NotFoundError, EventDecodeError):
                continue  # gone meanwhile, or not a heartbeat (its readers park it)
            if isinstance(event, SiteHeartbeatEvent):
                found[event.data.site] = event
        return found

    async def status(self, job_id: str) -> JobRecord:
        record = await (await self.index()).job(job_id)
        if record is None:
            raise UnknownJobError(f"no job {job_id!r} is known to this bus")
        return record

    async def jobs(self, *, workflow: Workflow | str | None = None, limit: int | None = 1000) -> list[JobRecord]:
        """Jobs in creation order (of one workflow, or all); ``limit=None`` for every one."""
        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        return await (await self.index()).jobs(workflow_id=wf_id, limit=-1 if limit is None else limit)

    async def _context(self, job_id: str) -> JobContext:
        return _context_of(await self.status(job_id))

    async def cancel(self, job_id: str, *, wait_s: float | None = 30.0) -> JobStatus | None:
        """Stop a job and everything it started, through its site's agents.

        The request is stored on the bus, so an agent that takes the job later (or
        adopts it) still stops it.  A job that has not started is CANCELLED at once.
        Then waits up to ``wait_s`` seconds for the job's end and returns it (``None``
        if it has not ended by then; ``wait_s=None`` does not wait).
        """
        record = await self.status(job_id)
        index = await self.index()
        while record.retry_next is not None:  # a retried end: the job is its latest attempt
            following = await index.job(record.retry_next)
            if following is None:
                # In its back-off: a request for the logical job, which the engine honours before it
                # starts the next attempt, and agents before they launch one (the engine may be storing
                # it this instant).
                await request_cancel(self, JobContext(job_id=record.logical_id, site=record.site))
                return await self._end_within(job_id, wait_s)
            record = following
        if record.state.is_terminal:
            return None  # nothing to stop; a late cancel must not relabel a finished job
        ctx = _context_of(record)
        await request_cancel(self, ctx)
        taken = record.native_state not in NOT_TAKEN or record.state.at_or_after(JobState.RUNNING)
        if not taken and self.dispatcher.speaks_for(ctx.site):
            # No agent has taken it yet (it waits in the stream): it ends now.  An agent
            # that takes it later sees the request and never starts it; one taking it
            # this instant hears the request and stops it, and its own report of the end
            # has the same id.
            reporter = Reporter(self, source="api", deadline_s=3 * self.config.request_timeout_s)
            await reporter.report(
                ctx, JobState.CANCELLED, native_state="cancelled", native_info="cancelled before it started"
            )
        return await self._end_within(job_id, wait_s)

    async def _end_within(self, job_id: str, wait_s: float | None) -> JobStatus | None:
        if wait_s is None:
            return None
        try:
            return await self.wait(job_id, timeout=wait_s)
        except JobTimeoutError:
            return None

    async def cancel_workflow(
        self, workflow: Workflow | str, *, reason: str | None = None, wait_s: float = 60.0
    ) -> WorkflowStop:
        """Stop a whole run: withdraw its active triggers, cancel its jobs on every site, wait.

        Repeats until nothing of the workflow is active -- a trigger that fired while it
        was being withdrawn started a job, which is cancelled in turn -- or ``wait_s``
        passes; woken by the workflow's own events.  Returns what it stopped and what
        (if anything) is still active.
        """
        wf_id = check_token(workflow.workflow_id if isinstance(workflow, Workflow) else workflow, "workflow id")
        why = reason or "the workflow was cancelled"
        withdrawn: list[str] = []
        cancelled: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with self.subscribe(f"{ROOT}.*.*.{wf_id}.>") as news:
            while True:
                index = await self.index()
                triggers = [t for t in await index.triggers(workflow_id=wf_id, state="active", limit=-1)]
                everything = await index.jobs(workflow_id=wf_id, limit=-1)
                jobs = [j for j in everything if not j.state.is_terminal]
                for j in everything:  # retried ends whose next attempt waits out its back-off
                    if j.retry_next is not None and j.job_id not in cancelled and await index.job(j.retry_next) is None:
                        await self.cancel(j.job_id, wait_s=None)
                        cancelled.append(j.job_id)
                for t in triggers:
                    if t.trigger_id not in withdrawn:
                        await self._withdraw(t, why)
                        withdrawn.append(t.trigger_id)
                for j in jobs:
                    if j.job_id not in cancelled:
                        await self.cancel(j.job_id, wait_s=None)
                        cancelled.append(j.job_id)
                if not triggers and not jobs:
                    return WorkflowStop(wf_id, tuple(withdrawn), tuple(cancelled), ())
                left = deadline - loop.time()
                if left <= 0:
                    active = tuple(t.trigger_id for t in triggers) + tuple(j.job_id for j in jobs)
                    return WorkflowStop(wf_id, tuple(withdrawn), tuple(cancelled), active)
                with contextlib.suppress(TimeoutError):
                    await news.next(timeout=left)  # something of the workflow moved: look again

    async def logs(self, job_id: str, stream: LogStream = "stdout") -> bytes:
        """What the job wrote, with the values of its site's secrets in this home's store as ``***``.

        A local job's output is redacted as it is written (see ``_secretrun``); this
        covers what a remote site's job printed, when read from the home of its agent.
        """
        ctx = await self._context(job_id)
        data = await (await self.site(ctx.site)).logs(ctx, stream)
        values = await anyio.to_thread.run_sync(SecretStore(self.config.home, ctx.site).values)
        return redact(data, values) if values else data

    # ------------------------------------------------------------------ data

    async def notate(
        self,
        location: str | Path,
        metadata: Mapping[str, Any] | None = None,
        *,
        site: str | None = None,
        size: int | None = None,
        checksum: str | None = None,
        job: JobContext | None = None,
    ) -> DataRecord:
        """Record data at ``location`` with ``metadata`` and publish its data event.

        ``site`` defaults to the calling job's site, else this bus's site.  A file on
        this machine gets its size and sha256 checksum.  Inside a job (or given
        ``job``), the data is attributed to that job and its workflow.
        """
        return await self._repo.notate(location, metadata, site=site, size=size, checksum=checksum, job=job)

    async def find(self, where: Mapping[str, Any] | DataQuery | None = None, **options: Any) -> DataPage:
        """Data whose metadata matches every predicate in ``where``; one page.

        ``where`` maps keys to a value (equality) or a predicate (:class:`Eq`,
        :class:`Glob`, :class:`Range`, :class:`Present`, or their dict forms);
        ``options`` are the other fields of :class:`DataQuery` (site, workflow_id,
        job_id, order_by, descending, limit, offset).
        """
        return await self._repo.find(where, **options)

    async def data(self, data_id: str) -> DataRecord:
        """One data record by id (:class:`UnknownDataError` if none)."""
        return await self._repo.record(data_id)

    async def put(
        self, local_path: str | Path, site_path: str, metadata: Mapping[str, Any] | None = None, *, site: str = "local"
    ) -> DataRecord:
        """Copy a local file onto a site and notate it there; the notation can fire data triggers."""
        return await self._repo.put(local_path, site_path, metadata, site=site)

    async def get(
        self, site_path: str, local_path: str | Path, metadata: Mapping[str, Any] | None = None, *, site: str = "local"
    ) -> DataRecord:
        """Copy a file off a site to here and notate the copy (with the original's metadata)."""
        return await self._repo.get(site_path, local_path, metadata, site=site)

    async def provenance(self, data_id: str) -> Provenance:
        """The data item, the job that produced it, and that job's upstream chain."""
        return await self._repo.provenance(data_id)

    # ------------------------------------------------------------------ offline transfer

    async def export_bundle(
        self,
        path: str | Path,
        *,
        workflow: Workflow | str | None = None,
        since_seq: int | None = None,
        since_time: datetime | None = None,
    ) -> int:
        """Write events (one workflow's, or all; from a sequence or a time) to a bundle file."""
        from ._bus._bundle import export_bundle

        wf_id = workflow.workflow_id if isinstance(workflow, Workflow) else workflow
        return await export_bundle(self, Path(path), workflow_id=wf_id, since_seq=since_seq, since_time=since_time)

    async def import_bundle(self, path: str | Path) -> ImportReport:
        """Replay a bundle here: refused whole if damaged; importing it again publishes nothing."""
        from ._bus._bundle import import_bundle

        return await import_bundle(self, Path(path))

    # ------------------------------------------------------------------ triggers


@dataclass(frozen=True)
class WorkflowStop:
    """What :meth:`Bus.cancel_workflow` stopped, and what was still active when it gave up (if anything)."""

    workflow_id: str
    triggers_withdrawn: tuple[str, ...]
    jobs_cancelled: tuple[str, ...]
    still_active: tuple[str, ...]


_MAX_SITES = 1000  # heartbeat subjects read by site_health(): one per site


def _context_of(r: JobRecord) -> JobContext:
    return JobContext(
        job_id=r.job_id, site=r.site, workflow_id=r.workflow_id, name=r.name, native_id=r.native_id,
        parent_ids=r.parent_ids,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def connect(config: BusConfig | None = None, *, name: str = "lwfm-bus") -> AsyncIterator[Bus]:
    """Open the bus described by ``config`` (default: from ``LWFM_BUS_*``, else embedded).

    ::

        async with lwfm_bus.connect() as bus:
            job = await bus.submit(JobDefn.of(["echo", "hi"]))
            await job.wait()
    """
    cfg = config if config is not None else load_config()
    async with open_event_bus(cfg, name=name, bus_class=Bus) as bus:
        assert isinstance(bus, Bus)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if cfg.engine == "on" or (cfg.engine == "auto" and bus.serves_embedded):
                    # Serving the embedded server itself, nobody else would judge triggers:
                    # this process does, as one more replica (replicas never fire one
                    # firing twice).
                    from ._engine._replica import serve_engine

                    await stack.enter_async_context(keeping_sources(bus))
                    bus._engine = await stack.enter_async_context(serve_engine(bus))
                if bus.serves_embedded and not cfg.agents:
                    bus.config = cfg = cfg.model_copy(update={"agents": ("*",)})  # the whole singleton here
                specs = bus.served_sites()
                if specs:
                    from ._sites._agent import AgentConfig, serve_agents

                    agent_config = AgentConfig(ack_wait_s=cfg.agent_ack_wait_s)
                    agents = await stack.enter_async_context(
                        serve_agents(bus, specs, home=cfg.home, job_env=bus.job_env(), config=agent_config)
                    )
                    bus._agents = {agent.site: agent for agent in agents}
                yield bus
        finally:
            await bus._aclose()
