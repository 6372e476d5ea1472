"""A blocking facade for plain scripts, mirroring the seed's use case 3a::

    job_a = make_job(["prepare", "input.dat"])
    job_a.submit()
    job_a.wait()

One background event loop per process (an anyio blocking portal) holds the bus
connection, so site adapters keep watching jobs between calls; it is closed at exit.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._client import Bus, connect
from ._config import BusConfig
from ._errors import ConfigError, JobError
from ._events import JobStatus
from ._index import JobRecord
from ._jobs import JobDefn, Workflow
from ._sites import LogStream

__all__ = ["SyncJob", "make_job", "sync_bus", "sync_close"]


class _Runtime:
    """The process-wide background loop and bus."""

    _lock = threading.Lock()
    _instance: _Runtime | None = None

    def __init__(self, config: BusConfig | None) -> None:
        self.config = config
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self._bus_cm = self.portal.wrap_async_context_manager(connect(config, name="lwfm-bus sync"))
        self.bus: Bus = self._bus_cm.__enter__()

    @classmethod
    def get(cls, config: BusConfig | None = None) -> _Runtime:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(config)
                atexit.register(cls.shutdown)
            elif config is not None and config != cls._instance.config:
                raise ConfigError(
                    "this process's sync bus is already connected with another configuration; "
                    "call lwfm_bus.sync_close() first"
                )
            return cls._instance

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            inst, cls._instance = cls._instance, None
        if inst is not None:
            inst._bus_cm.__exit__(None, None, None)
            inst._portal_cm.__exit__(None, None, None)

    def call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await func(*args, **kwargs)

        return self.portal.call(run)


def sync_close() -> None:
    """Close the process's sync bus now (it is also closed at exit)."""
    _Runtime.shutdown()


def sync_bus(config: BusConfig | None = None) -> Bus:
    """The process's shared bus, connected on first use and closed at exit."""
    return _Runtime.get(config).bus


class SyncJob:
    """A job for blocking code: define it, ``submit()``, ``wait()``."""

    def __init__(
        self,
        defn: JobDefn,
        *,
        site: str = "local",
        workflow: Workflow | str | None = None,
        parents: Iterable[str] = (),
        config: BusConfig | None = None,
    ) -> None:
        self.defn = defn
        self.site = site
        self.workflow = workflow
        self.parents = tuple(parents)
        self._config = config
        self._job_id: str | None = None

    @property
    def job_id(self) -> str:
        if self._job_id is None:
            raise JobError("the job has not been submitted yet: call submit() first")
        return self._job_id

    def _rt(self) -> _Runtime:
        return _Runtime.get(self._config)

    def submit(self) -> SyncJob:
        if self._job_id is not None:
            raise JobError(f"job {self._job_id} was already submitted")
        rt = self._rt()
        job = rt.call(rt.bus.submit, self.defn, site=self.site, workflow=self.workflow, parents=self.parents)
        self._job_id = job.job_id
        return self

    def wait(self, timeout: float | None = None) -> JobStatus:
        rt = self._rt()
        result: JobStatus = rt.call(rt.bus.wait, self.job_id, timeout=timeout)
        return result

    def status(self) -> JobRecord:
        rt = self._rt()
        result: JobRecord = rt.call(rt.bus.status, self.job_id)
        return result

    def cancel(self) -> None:
        rt = self._rt()
        rt.call(rt.bus.cancel, self.job_id)

    def logs(self, stream: LogStream = "stdout") -> bytes:
        rt = self._rt()
        result: bytes = rt.call(rt.bus.logs, self.job_id, stream)
        return result

    def __repr__(self) -> str:
        return f"SyncJob({self.defn.label()!r}, job_id={self._job_id!r}, site={self.site!r})"


def make_job(
    command: str | list[str] | tuple[str, ...] | JobDefn,
    *,
    site: str = "local",
    workflow: Workflow | str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    config: BusConfig | None = None,
) -> SyncJob:
    """A job for blocking scripts: a list runs a program, a string runs through the shell."""
    defn = command if isinstance(command, JobDefn) else JobDefn.of(command, name=name, env=dict(env or {}), cwd=cwd)
    return SyncJob(defn, site=site, workflow=workflow, config=config)
