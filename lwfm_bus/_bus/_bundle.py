"""Offline transfer (use case 1f): events written to a bundle file here, replayed on another bus.

A bundle is JSON Lines: a header, one CloudEvents event per line, and a trailer that
counts the events and holds the SHA-256 of their lines.  Data records travel as their
data events, so the other side's index notates them and its engine can fire on them.

Import reads and checks the whole file before it publishes anything: a truncated or
corrupted bundle is refused whole, with the line at fault.  Events keep their ids, so
the server drops a repeat within its duplicate window; beyond it, a ledger (the KV
bucket ``lwfm_imported``, one key per event id) makes a second import publish
nothing.  An event is recorded in the ledger only after it was stored, so an import
that dies half-way is finished, not skipped, by the next attempt.

An import brings facts, never work.  Every bus has an identity (:func:`bus_identity`:
a random id created once, kept in the bus's own KV bucket ``lwfm_identity``), so two
singleton homes differ although both call their site ``local``; ``export`` writes it
into the header (``source_bus``), and ``import`` stores every event with the header
``Lwfm-Origin: <that id>`` (``unknown`` from a bundle written before identities).  The
engine never takes a trigger event that carries it for its own (:func:`imported_from`):
an imported registration is never indexed, so it never fires here -- the origin ran
its jobs already -- while imported job and data events fire the importer's own
triggers, as they should.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from .._errors import BundleError
from .._events import Event, EventDecodeError, decode_event, encode_event
from .._ids import derived_id, new_id
from .._subjects import ROOT, Token, workflow_filter
from ._eventbus import EventBus
from ._replicas import open_bucket

__all__ = [
    "BUNDLE_VERSION",
    "ORIGIN_HEADER",
    "BundleHeader",
    "BundleTrailer",
    "ImportReport",
    "bus_identity",
    "export_bundle",
    "import_bundle",
    "imported_from",
]

BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 1 << 30  # read whole: each line is an event within the bus's event limit
LEDGER_BUCKET = "lwfm_imported"
IDENTITY_BUCKET = "lwfm_identity"
_IDENTITY_KEY = "bus"
ORIGIN_HEADER = "Lwfm-Origin"
"""The header of every imported event: the identity of the bus it was exported from."""
UNKNOWN_ORIGIN = "unknown"
"""The origin of events from a bundle whose header names no bus (written before identities)."""
_ORIGIN_FOLDED = ORIGIN_HEADER.lower()


class BundleHeader(BaseModel):
    """The first line of a bundle: what it is and what was selected."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["lwfm-bus-bundle"] = "lwfm-bus-bundle"
    version: Literal[1] = 1
    created: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    source_site: Token = Field(description="Site of the bus the events were exported from.")
    source_bus: Token | None = Field(
        default=None,
        description="Identity of the bus the events were exported from (each bus has its own, whatever its "
        "site's name); absent in bundles written before buses had one.",
    )
    workflow_id: Token | None = Field(default=None, description="Only this workflow's events, if given.")
    since_seq: NonNegativeInt | None = Field(default=None, description="Only events from this stream sequence on.")
    since_time: AwareDatetime | None = Field(default=None, description="Only events from this time on.")


class BundleTrailer(BaseModel):
    """The last line: without it (or with a wrong count or digest) the bundle is refused."""

    model_config = ConfigDict(extra="forbid")

    end: Literal[True] = True
    events: NonNegativeInt = Field(description="How many event lines precede this one.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the event lines, newlines included.")


@dataclass(frozen=True)
class ImportReport:
    """What an import did: events stored now, and events the bus had already."""

    events: int
    published: int
    already: int
    origin: str = UNKNOWN_ORIGIN  # the identity of the bus the bundle came from, as its events are marked


async def bus_identity(bus: EventBus) -> str:
    """This bus's identity: a random id created once, kept in the bus (KV ``lwfm_identity``).

    It belongs to the stream, not to a process or a home directory: every process on
    one bus reads the same id, and two buses have two, even when both call their site
    ``local``.  Created on first use, race-free (create-if-absent).
    """
    kv = await _bucket(bus, IDENTITY_BUCKET, "lwfm-bus identity of this bus")
    try:
        entry = await kv.get(_IDENTITY_KEY)
    except nats.js.errors.KeyNotFoundError:
        mine = new_id()
        try:
            await kv.create(_IDENTITY_KEY, mine.encode())
            return mine
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await kv.get(_IDENTITY_KEY)  # another process created it first
    return bytes(entry.value or b"").decode()


def imported_from(headers: Mapping[str, str] | None) -> str | None:
    """The bus an event was imported from (its ``Lwfm-Origin`` header), or None for an event made here."""
    if not headers:
        return None
    found = headers.get(ORIGIN_HEADER)
    if found is None:  # header names are case-sensitive on the wire; a foreign tool may differ
        found = next((v for k, v in headers.items() if k.lower() == _ORIGIN_FOLDED), None)
    return found


async def export_bundle(
    bus: EventBus,
    path: Path,
    *,
    workflow_id: str | None = None,
    since_seq: int | None = None,
    since_time: datetime | None = None,
) -> int:
    """Write the selected events to ``path`` (atomically); return how many."""
    if since_seq is not None and since_time is not None:
        raise BundleError("choose at most one of since_seq and since_time")
    if since_time is not None and since_time.tzinfo is None:
        raise BundleError("since_time must be timezone-aware")
    header = BundleHeader(
        source_site=bus.config.site,
        source_bus=await bus_identity(bus),
        workflow_id=workflow_id,
        since_seq=since_seq,
        since_time=since_time,
    )
    subject = workflow_filter(workflow_id) if workflow_id else f"{ROOT}.>"
    digest = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.partial")
    count = 0
    with open(tmp, "wb") as out:  # noqa: ASYNC230 - sequential writes between network reads
        out.write(header.model_dump_json().encode() + b"\n")
        async with bus.replay(subject, start_seq=since_seq, start_time=since_time) as history:
            async for event in history:
                line = encode_event(event) + b"\n"
                digest.update(line)
                out.write(line)
                count += 1
        out.write(BundleTrailer(events=count, sha256=digest.hexdigest()).model_dump_json().encode() + b"\n")
    await anyio.to_thread.run_sync(tmp.replace, path)
    return count


def read_bundle(path: Path, max_event_bytes: int) -> tuple[BundleHeader, list[Event]]:
    """Every event of a bundle, checked whole: header, each event, count and digest."""
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path}: {size} bytes is larger than a bundle may be ({MAX_BUNDLE_BYTES}); export less")
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror}") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        raise BundleError(f"{path}: truncated (the last line is incomplete)")
    if len(lines) < 2:
        raise BundleError(f"{path}: truncated (no header and trailer)")
    try:
        header = BundleHeader.model_validate_json(lines[0])
    except ValidationError as exc:
        raise BundleError(
            f"{path}: line 1 is not an lwfm-bus bundle header (version {BUNDLE_VERSION}): {_first(exc)}"
        ) from None
    try:
        trailer = BundleTrailer.model_validate_json(lines[-1])
    except ValidationError:
        raise BundleError(f"{path}: truncated or damaged: the last line is not the bundle's trailer") from None
    body = lines[1:-1]
    if trailer.events != len(body):
        raise BundleError(f"{path}: the trailer counts {trailer.events} events, the file holds {len(body)}")
    digest = hashlib.sha256()
    for line in body:
        digest.update(line + b"\n")
    if digest.hexdigest() != trailer.sha256:
        raise BundleError(f"{path}: the events do not match the trailer's SHA-256: the file was altered or damaged")
    events = []
    for n, line in enumerate(body, start=2):
        try:
            events.append(decode_event(line, max_event_bytes))
        except EventDecodeError as exc:
            raise BundleError(f"{path}: line {n}: {exc}") from None
    return header, events


async def import_bundle(bus: EventBus, path: Path) -> ImportReport:
    """Replay a bundle's events on ``bus``, each at most once, marked with their origin (see the module docstring)."""
    header, events = await anyio.to_thread.run_sync(read_bundle, path, bus.config.max_event_bytes)
    origin = header.source_bus or UNKNOWN_ORIGIN
    marked = {ORIGIN_HEADER: origin}
    ledger = await _bucket(bus, LEDGER_BUCKET, "lwfm-bus imported event ids")
    published = already = 0
    for event in events:
        key = "e." + derived_id(event.id)
        try:
            await ledger.get(key)
            already += 1
            continue
        except nats.js.errors.KeyNotFoundError:
            pass
        ack = await bus.publish(event, headers=marked)
        # A concurrent import of the same bundle may have recorded it first: that is fine.
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await ledger.create(key, str(ack.seq).encode())
        if ack.duplicate:
            already += 1
        else:
            published += 1
    return ImportReport(events=len(events), published=published, already=already, origin=origin)


async def _bucket(bus: EventBus, name: str, description: str) -> Any:
    config = KeyValueConfig(bucket=name, description=description, history=1, storage=StorageType.FILE)
    return await open_bucket(bus.jetstream, config, bus.replicas)  # created by whichever process comes first


def _first(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
