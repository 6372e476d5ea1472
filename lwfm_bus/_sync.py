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
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._client import Bus, connect
from ._config import BusConfig
from ._errors import ConfigError, JobError
from ._events import JobStatus, new_id
from ._index._projection import JobRecord
from ._jobs import JobDefn, Workflow
from ._query import DataPage, DataRecord
from ._sites._protocol import LogStream
from ._subjects import check_token
from ._triggers import Trigger

__all__ = [
    "SyncJob",
    "find",
    "get",
    "make_job",
    "notate",
    "put",
    "set_data_trigger",
    "set_job_trigger",
    "sync_bus",
    "sync_close",
]


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
        job_id: str | None = None,
    ) -> None:
        self.defn = defn
        self.site = site
        self.workflow = workflow
        self.parents = tuple(parents)
        self._config = config
        # The id exists before the job runs, so triggers can name it (use cases 3b, 3c); a
        # given one lets another site wire "B after A" before A is submitted.
        self.job_id: str = check_token(job_id, "job id") if job_id is not None else new_id()
        self._submitted = False
        self._triggered_by: str | None = None

    def _rt(self) -> _Runtime:
        return _Runtime.get(self._config)

    def submit(self) -> SyncJob:
        if self._triggered_by is not None:
            raise JobError(f"job {self.job_id} is started by trigger {self._triggered_by}, not by submit()")
        if self._submitted:
            raise JobError(f"job {self.job_id} was already submitted")
        rt = self._rt()
        rt.call(
            rt.bus.submit, self.defn, site=self.site, workflow=self.workflow, parents=self.parents, job_id=self.job_id
        )
        self._submitted = True
        return self

    def _check_started(self) -> None:
        if not self._submitted and self._triggered_by is None:
            raise JobError(f"job {self.job_id} has not been submitted: call submit() first, or set a trigger on it")

    def wait(self, timeout: float | None = None) -> JobStatus:
        self._check_started()
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
        return f"SyncJob({self.defn.label()!r}, job_id={self.job_id!r}, site={self.site!r})"


def make_job(
    command: str | list[str] | tuple[str, ...] | JobDefn,
    *,
    site: str = "local",
    workflow: Workflow | str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    config: BusConfig | None = None,
    job_id: str | None = None,
) -> SyncJob:
    """A job for blocking scripts: a list runs a program, a string runs through the shell.

    ``job_id`` (a token) fixes the job's id in advance, e.g. so that another site can
    register "B after A" before A is submitted; by default a fresh one is made.
    """
    defn = command if isinstance(command, JobDefn) else JobDefn.of(command, name=name, env=dict(env or {}), cwd=cwd)
    return SyncJob(defn, site=site, workflow=workflow, config=config, job_id=job_id)


def _workflow_id(workflow: Workflow | str | None) -> str | None:
    return workflow.workflow_id if isinstance(workflow, Workflow) else workflow


def set_job_trigger(
    job: SyncJob,
    upstream: SyncJob | str | Iterable[SyncJob | str],
    **options: Any,
) -> Trigger:
    """Run ``job`` when ``upstream`` completes (3b), or when every job of a list does (3c).

    Register before submitting the upstream jobs or after: either way it fires once.
    ``options`` are those of :meth:`Bus.set_job_trigger` (states, match, mode, at_least,
    within_s, fallback).  Then ``job.wait()`` waits for the triggered run.
    """
    ups: str | list[str] = (
        _upstream_id(upstream) if isinstance(upstream, SyncJob | str) else [_upstream_id(u) for u in upstream]
    )
    return _arm(job, "set_job_trigger", ups, options)


def set_data_trigger(job: SyncJob, signature: Mapping[str, Any], **options: Any) -> Trigger:
    """Run ``job`` when data whose metadata matches ``signature`` arrives (3d), in one call.

    ``signature`` maps metadata keys to a value (equality) or a predicate such as
    ``{"op": "range", "ge": 3}``; options are those of :meth:`Bus.set_data_trigger`.
    """
    return _arm(job, "set_data_trigger", signature, options)


def _arm(job: SyncJob, method: str, condition: object, options: dict[str, Any]) -> Trigger:
    """Register a trigger that starts ``job`` (with its id, site and workflow) when ``condition`` holds."""
    if job._submitted:
        raise JobError(f"job {job.job_id} was already submitted; a trigger cannot start it again")
    rt = job._rt()
    trigger: Trigger = rt.call(
        getattr(rt.bus, method),
        job.defn,
        condition,
        site=job.site,
        job_id=job.job_id,
        workflow=_workflow_id(job.workflow),
        **options,
    )
    job._triggered_by = trigger.trigger_id
    return trigger


def _upstream_id(job: SyncJob | str) -> str:
    return job if isinstance(job, str) else job.job_id


# --------------------------------------------------------------------- the metadata repository


def notate(location: str | Path, metadata: Mapping[str, Any] | None = None, **options: Any) -> DataRecord:
    """Blocking :meth:`Bus.notate`: record data with metadata (inside a job, attributed to it)."""
    rt = _Runtime.get()
    record: DataRecord = rt.call(rt.bus.notate, location, metadata, **options)
    return record


def find(where: Mapping[str, Any] | None = None, **options: Any) -> DataPage:
    """Blocking :meth:`Bus.find`: one page of data matching ``where``."""
    rt = _Runtime.get()
    page: DataPage = rt.call(rt.bus.find, where, **options)
    return page


def put(
    local_path: str | Path, site_path: str, metadata: Mapping[str, Any] | None = None, **options: Any
) -> DataRecord:
    """Blocking :meth:`Bus.put`: copy a file onto a site and notate it."""
    rt = _Runtime.get()
    record: DataRecord = rt.call(rt.bus.put, local_path, site_path, metadata, **options)
    return record


def get(
    site_path: str, local_path: str | Path, metadata: Mapping[str, Any] | None = None, **options: Any
) -> DataRecord:
    """Blocking :meth:`Bus.get`: copy a file off a site and notate the copy."""
    rt = _Runtime.get()
    record: DataRecord = rt.call(rt.bus.get, site_path, local_path, metadata, **options)
    return record
