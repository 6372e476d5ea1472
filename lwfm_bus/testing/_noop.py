"""A site that runs nothing, for tests and benchmarks of what happens around a job.

Everything up to the site is real: the engine's firing, the stored submission, the
site's agent taking it and its retried reports.  Only the job itself is skipped: the
no-op site reports each job RUNNING then COMPLETE (exit 0) as it is submitted, and
tells its listeners the instant it was asked.  That instant is what a benchmark of
"trigger -> job handed to its site" times, with no private hook in the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .._bus._eventbus import EventBus
from .._errors import SiteError
from .._jobs import JobContext, JobDefn
from .._sites._agent import AgentConfig, serve_agents
from .._sites._protocol import LogStream, SiteRuntime
from .._sites._registry import SiteSpec
from .._states import JobState

__all__ = ["NoopSite", "serve_noop_site"]


class NoopSite:
    """A :class:`~lwfm_bus.SiteAdapter` whose jobs complete as they are submitted."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel | None, runtime: SiteRuntime) -> None:
        self._runtime = runtime
        self.submitted: list[str] = []
        """Job ids in the order the site was asked to run them (a repeat submit is an adoption)."""
        self.listeners: list[Callable[[str], None]] = []
        """Called with each job id as its submit arrives, before anything is reported."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def submit(self, ctx: JobContext, defn: JobDefn) -> str:
        for listener in self.listeners:
            listener(ctx.job_id)
        self.submitted.append(ctx.job_id)
        await self._runtime.reporter.report(ctx, JobState.RUNNING, native_state="noop")
        await self._runtime.reporter.report(ctx, JobState.COMPLETE, native_state="noop", exit_code=0)
        return f"noop-{ctx.job_id}"

    async def status(self, ctx: JobContext) -> JobState | None:
        return JobState.COMPLETE if ctx.job_id in self.submitted else None

    async def cancel(self, ctx: JobContext) -> None:
        return None  # every job has already ended

    async def logs(self, ctx: JobContext, stream: LogStream = "stdout") -> bytes:
        return b""

    async def put(self, local_path: Path, site_path: str) -> None:
        raise SiteError(f"site {self._runtime.site!r} is a no-op site: it holds no data")

    async def get(self, site_path: str, local_path: Path) -> None:
        raise SiteError(f"site {self._runtime.site!r} is a no-op site: it holds no data")


@contextlib.asynccontextmanager
async def serve_noop_site(bus: EventBus, site: str = "noop", *, home: Path | None = None) -> AsyncIterator[NoopSite]:
    """Serve ``site`` with a no-op adapter through a real agent in this process.

    Submit to it as to any site (``JobDefn.of([...])`` with ``site=...``); the block is
    entered once the agent answers and its adapter is open.
    """
    spec = SiteSpec(name=site, adapter="noop", adapter_class=NoopSite, options=NoopSite.Options())
    where = home if home is not None else bus.config.home
    async with serve_agents(bus, [spec], home=where, job_env={}, config=AgentConfig()) as agents:
        adapter = await agents[0].opened()
        assert isinstance(adapter, NoopSite)
        yield adapter
