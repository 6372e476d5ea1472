"""The boundary between the core and a site: one small Protocol, and what the core lends.

An adapter turns the core's requests (submit, status, cancel, logs, put, get) into a
site's native operations, and reports what it observes as canonical job states
through the :class:`StatusReporter` it is given -- it never publishes on its own, so
the subjects, ids and ordering rules live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from .._events import SiteStatus
from .._jobs import JobContext, JobDefn
from .._states import JobState

__all__ = ["LogStream", "SiteAdapter", "SiteRole", "SiteRuntime", "StatusReporter"]

LogStream = Literal["stdout", "stderr"]


class StatusReporter(Protocol):
    """How an adapter tells the bus what it saw."""

    async def report(
        self,
        ctx: JobContext,
        state: JobState,
        *,
        native_state: str | None = None,
        native_info: str | None = None,
        exit_code: int | None = None,
        info: str | None = None,
    ) -> None: ...


SiteRole = Literal["agent", "client"]


@dataclass(frozen=True)
class SiteRuntime:
    """What the core lends an adapter: its name, a private state directory, a reporter,
    and the environment that lets a launched job reach the bus by itself.

    ``role`` says who opened the adapter.  Only a site's **agent** runs jobs: it adopts
    what a dead agent left and watches jobs to their end.  A **client** (a process
    reading logs, copying data, asking a status) must do neither: an adapter opened as
    a client never adopts, never watches and refuses to submit.

    ``job_env`` is made for this machine: its ``LWFM_BUS_HOME`` is this process's home.
    An adapter whose jobs run on another host gives them a home there instead (the
    ``ssh`` and ``slurm`` adapters' ``bus_home``), and by default their job directory
    as their working directory.
    """

    site: str
    state_dir: Path
    reporter: StatusReporter
    job_env: Mapping[str, str] = field(default_factory=dict)
    role: SiteRole = "agent"
    on_health: Callable[[SiteStatus, str | None], None] | None = None
    withheld_env: frozenset[str] = frozenset()
    """Variables of this process a job must not inherit: the ones the site's ``secret_env`` names
    (a job gets a secret only by naming it).  ``LWFM_SECRET_*`` are withheld too."""

    def report_health(self, status: SiteStatus, reason: str | None = None) -> None:
        """Say how the site is: DEGRADED with why (its scheduler does not answer, its output
        cannot be read), UP once it works again.  Published by the agent when it changes,
        shown by ``status``, ``workflow show`` and the dashboard; cheap to call at every poll."""
        if self.on_health is not None:
            self.on_health(status, reason)


@runtime_checkable
class SiteAdapter(Protocol):
    """A site.  Implementations declare ``Options`` (a pydantic model of their settings)
    and are constructed as ``Adapter(options, runtime)``."""

    Options: ClassVar[type[BaseModel]]

    async def open(self) -> None:
        """Connect, and take over jobs a previous process left running."""

    async def close(self) -> None:
        """Release connections; running jobs keep running."""

    async def submit(self, ctx: JobContext, defn: JobDefn) -> str:
        """Start (or queue) the job; return the site's native id."""

    async def status(self, ctx: JobContext) -> JobState | None:
        """Ask the site directly; ``None`` if it no longer knows the job."""

    async def cancel(self, ctx: JobContext) -> None:
        """Stop the job and everything it started."""

    async def logs(self, ctx: JobContext, stream: LogStream = "stdout") -> bytes:
        """What the job wrote so far."""

    async def put(self, local_path: Path, site_path: str) -> None:
        """Copy bytes onto the site."""

    async def get(self, site_path: str, local_path: Path) -> None:
        """Copy bytes off the site."""
