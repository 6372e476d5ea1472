"""The metadata repository: notate data, find it, copy it on and off sites, trace it.

A notation is one data event on the bus; the index projects it for ``find`` and the
engine matches it against data-flow triggers, so notating (or a ``put``, which
notates by itself) is all it takes to fire a downstream job.  Everything is checked
before the one publish, so a bad call records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from pydantic import ValidationError

from .._bus._eventbus import PublishAck
from .._config import BusConfig
from .._errors import DataError, EventTooLargeError, SiteError, UnknownDataError
from .._events import DataArrival, Event, _summarise, make_event, new_id
from .._identity import calling_job, file_checksum
from .._index._projection import JobIndex, JobRecord
from .._jobs import JobContext
from .._query import DataPage, DataQuery, DataRecord
from .._sites._protocol import SiteAdapter


class RepoBus(Protocol):
    """What the repository and the workspaces use of a bus (``Bus`` is one): nothing more."""

    config: BusConfig

    async def publish(self, event: Event) -> PublishAck: ...

    async def index(self) -> JobIndex: ...

    def is_local_site(self, site: str) -> bool: ...

    async def site(self, name: str) -> SiteAdapter: ...


__all__ = ["DataRepo", "Provenance", "RepoBus"]

_MAX_ANCESTORS = 10_000


@dataclass(frozen=True)
class Provenance:
    """Where a data item came from: the job that made it and that job's upstream chain.

    ``ancestors`` are the producing job's parents, their parents, and so on, nearest
    first (breadth-first, each job once).
    """

    data: DataRecord
    job: JobRecord | None
    ancestors: list[JobRecord]


class DataRepo:
    """The repository half of a :class:`~lwfm_bus.Bus` (``bus.notate``, ``bus.find``, ...)."""

    def __init__(self, bus: RepoBus) -> None:
        self._bus = bus

    async def notate(
        self,
        location: str | Path,
        metadata: Mapping[str, Any] | None = None,
        *,
        site: str | None = None,
        size: int | None = None,
        checksum: str | None = None,
        job: JobContext | None = None,
        data_id: str | None = None,
        copy: tuple[Literal["put", "get"], str, str] | None = None,
    ) -> DataRecord:
        """Record data at ``location`` on ``site`` with ``metadata``, and announce it.

        A file on this machine gets its size and checksum, and its path made absolute.
        Inside a job, the data is attributed to that job and its workflow.
        """
        job = job or calling_job()
        site = site or (job.site if job else self._bus.config.site)
        text = str(location)
        if self._bus.is_local_site(site) and not _is_url(text) and checksum is None:
            found = await anyio.to_thread.run_sync(_describe, Path(text))
            if found is not None:
                text, checksum, size = found
        direction, origin_site, origin = copy if copy else (None, None, None)
        try:
            data = DataArrival(
                data_id=data_id or new_id(),
                site=site,
                location=text,
                metadata=dict(metadata or {}),
                size=size,
                checksum=checksum,
                job_id=job.job_id if job else None,
                workflow_id=job.workflow_id if job else None,
                direction=direction,
                origin_site=origin_site,
                origin=origin,
            )
        except ValidationError as exc:
            raise DataError(f"cannot notate {text!r}: {_summarise(exc)}") from None
        event = make_event(data, source=f"/sites/{self._bus.config.site}/repo")
        try:
            ack = await self._bus.publish(event)
        except EventTooLargeError as exc:
            raise DataError(f"cannot notate {text!r}: the metadata is too large ({exc})") from None
        return DataRecord(**data.model_dump(), time=event.time, seq=ack.seq)

    async def find(self, where: Mapping[str, Any] | DataQuery | None = None, **options: Any) -> DataPage:
        """One page of the data whose metadata matches ``where`` (see :class:`DataQuery`)."""
        if isinstance(where, DataQuery):
            query = where.model_copy(update=options) if options else where
        else:
            try:
                query = DataQuery.model_validate({"where": dict(where or {}), **options})
            except ValidationError as exc:
                raise DataError(f"bad query: {_summarise(exc)}") from None
        return await (await self._bus.index()).find(query)

    async def record(self, data_id: str) -> DataRecord:
        found = await (await self._bus.index()).data_record(data_id)
        if found is None:
            raise UnknownDataError(f"no data {data_id!r} is known to this bus")
        return found

    async def put(
        self,
        local_path: str | Path,
        site_path: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        site: str = "local",
        job: JobContext | None = None,
    ) -> DataRecord:
        """Copy a local file onto ``site`` and notate it there (which may fire data triggers)."""
        source = Path(local_path)
        if not site_path:
            raise DataError("put: the site path is empty")
        found = await anyio.to_thread.run_sync(_describe, source)
        if found is None:
            raise DataError(f"put: {str(source)!r} is not a readable file")
        absolute, checksum, size = found
        adapter = await self._bus.site(site)
        try:
            await adapter.put(source, site_path)
        except (OSError, SiteError) as exc:
            raise DataError(f"put {str(source)!r} -> {site}:{site_path}: {exc}") from exc
        return await self.notate(
            site_path, metadata, site=site, size=size, checksum=checksum, job=job,
            copy=("put", self._bus.config.site, absolute),
        )  # fmt: skip

    async def get(
        self,
        site_path: str,
        local_path: str | Path,
        metadata: Mapping[str, Any] | None = None,
        *,
        site: str = "local",
        job: JobContext | None = None,
    ) -> DataRecord:
        """Copy a file off ``site`` to here and notate the copy.

        The copy inherits the metadata of the newest notation of the original, if
        there is one, updated with ``metadata``.
        """
        target = Path(local_path)
        adapter = await self._bus.site(site)
        try:
            await adapter.get(site_path, target)
        except (OSError, SiteError) as exc:
            raise DataError(f"get {site}:{site_path} -> {str(target)!r}: {exc}") from exc
        checksum, size = await anyio.to_thread.run_sync(file_checksum, target)
        original = await (await self._bus.index()).data_at(site, site_path)
        merged = {**(original.metadata if original else {}), **dict(metadata or {})}
        return await self.notate(
            target, merged, site=self._bus.config.site, size=size, checksum=checksum, job=job,
            copy=("get", site, site_path),
        )  # fmt: skip

    async def provenance(self, data_id: str) -> Provenance:
        """The data item, the job that produced it, and that job's ancestors."""
        record = await self.record(data_id)
        index = await self._bus.index()
        producer = await index.job(record.job_id) if record.job_id else None
        ancestors: list[JobRecord] = []
        seen = {producer.job_id} if producer else set()
        frontier = list(producer.parent_ids) if producer else []
        while frontier and len(ancestors) < _MAX_ANCESTORS:
            job_id = frontier.pop(0)
            if job_id in seen:
                continue
            seen.add(job_id)
            parent = await index.job(job_id)
            if parent is not None:
                ancestors.append(parent)
                frontier.extend(parent.parent_ids)
        return Provenance(data=record, job=producer, ancestors=ancestors)


def _describe(path: Path) -> tuple[str, str, int] | None:
    """A local file's absolute path, checksum and size; None if it is not a regular file."""
    if not path.is_file():
        return None
    checksum, size = file_checksum(path)
    return str(path.resolve()), checksum, size


def _is_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isalpha()
