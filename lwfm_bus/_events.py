"""Typed events in a CloudEvents 1.0 structured-JSON envelope.

Every fact the system learns is one of these immutable models.  On the wire an event
is the CloudEvents JSON object itself; its ``type`` is the discriminator that picks
the model, so one :data:`decode_event` call turns any bytes from the bus into the
right class -- or into an :class:`InvalidEventError` that says why not.

The envelope ``id`` doubles as the JetStream ``Nats-Msg-Id``: publishing the same
event twice is dropped by the server, and an imported event is recognised.
``schemaversion`` (a CloudEvents extension attribute) is bumped when a payload changes
incompatibly, so old and new producers can share a stream.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from ._errors import EventTooLargeError, InvalidEventError
from ._ids import new_id
from ._limits import FiniteFloat, Int64, NonNegativeInt64
from ._meta import Metadata
from ._retry import MAX_ATTEMPTS, MAX_RETRY_DELAY_S, retry_id
from ._states import JobState
from ._subjects import Token, subject_for
from ._triggers import Trigger
from ._workspace import AbsPath, LogicalName, WorkspaceLocation

__all__ = [
    "SCHEMA_VERSION",
    "DataArrival",
    "DataEvent",
    "DecodeFailure",
    "Event",
    "EventData",
    "EventDecodeError",
    "JobStatus",
    "JobStatusEvent",
    "SiteHeartbeat",
    "SiteHeartbeatEvent",
    "SiteStatus",
    "TriggerCancelled",
    "TriggerCancelledEvent",
    "TriggerDeadline",
    "TriggerDeadlineEvent",
    "TriggerExpired",
    "TriggerExpiredEvent",
    "TriggerFailed",
    "TriggerFailedEvent",
    "TriggerFired",
    "TriggerFiredEvent",
    "TriggerRegistered",
    "TriggerRegisteredEvent",
    "TriggerTick",
    "TriggerTickEvent",
    "WorkflowDefined",
    "WorkflowDefinedEvent",
    "WorkspaceChanged",
    "WorkspaceChangedEvent",
    "decode_event",
    "encode_event",
    "event_adapter",
    "event_classes",
    "make_event",
    "new_id",
]

SCHEMA_VERSION = 1

EventId = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,200}$")]
"""Printable ASCII without spaces: it is also sent as a NATS header value."""

ShortText = Annotated[str, StringConstraints(max_length=4096)]


def _now() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- payloads


class JobStatus(_Model):
    """A job reached a canonical state (``INFO`` carries progress while running)."""

    job_id: Token = Field(description="The bus-wide job id.")
    site: Token = Field(description="Site the job runs on.")
    state: JobState = Field(description="Canonical lwfm state.")
    workflow_id: Token | None = Field(default=None, description="Workflow the job belongs to.")
    name: ShortText | None = Field(default=None, description="Human-readable job name.")
    native_id: ShortText | None = Field(default=None, description="The site's own id (pid, Slurm job id).")
    native_state: ShortText | None = Field(default=None, description="The site's own state word, unmapped.")
    native_info: ShortText | None = Field(default=None, description="The site's own explanation.")
    info: ShortText | None = Field(default=None, description="Free text from the job or the adapter.")
    exit_code: Int64 | None = Field(default=None, description="Process exit code, when one exists.")
    parent_ids: tuple[Token, ...] = Field(default=(), description="Jobs whose completion started this one.")
    attempt: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] | None = Field(
        default=None, description="Which attempt this job is, when it has a retry policy or is a retry."
    )
    attempt_of: Token | None = Field(
        default=None, description="A retry: the logical job it is an attempt of (the first attempt's id)."
    )
    retry_next: Token | None = Field(
        default=None,
        description=(
            "On a FAILED end that the job's retry policy retries: the next attempt's job id.  This end is "
            "then not the logical job's; triggers, joins and wait() follow the next attempt."
        ),
    )
    retry_delay_s: Annotated[FiniteFloat, Field(ge=0, le=MAX_RETRY_DELAY_S)] | None = Field(
        default=None, description="With retry_next: seconds after this event before the next attempt is submitted."
    )

    @model_validator(mode="after")
    def _attempts_hold_together(self) -> Self:
        """A retry mark is only what a retry policy can say: on a FAILED end, naming the one next attempt.

        Judges act on it (the next attempt is started, the end is not the job's), so a
        mark that no policy could have made -- on a COMPLETE end, or naming another job --
        is refused at the edge rather than trusted.
        """
        if self.attempt_of is not None and (self.attempt is None or self.attempt < 2):
            raise ValueError("attempt_of is for attempts after the first: give attempt >= 2")
        if self.retry_delay_s is not None and self.retry_next is None:
            raise ValueError("retry_delay_s goes with retry_next")
        if self.retry_next is not None:
            if self.state is not JobState.FAILED or self.attempt is None:
                raise ValueError("retry_next marks a FAILED end of a numbered attempt")
            if self.retry_next != retry_id(self.logical_id, self.attempt + 1):
                raise ValueError("retry_next is not the id of this job's next attempt")
        return self

    @property
    def logical_id(self) -> str:
        """The job every attempt of this one stands for."""
        return self.attempt_of or self.job_id

    @property
    def is_final(self) -> bool:
        """A terminal state that ends the logical job (not one its retry policy runs again)."""
        return self.state.is_terminal and self.retry_next is None


class DataArrival(_Model):
    """Data with metadata appeared at a location (written by a job or notated by a user)."""

    data_id: Token = Field(description="Id of this data record.")
    site: Token = Field(description="Site where the bytes live.")
    location: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="Path on the site, or a URL."
    )
    metadata: Metadata = Field(default_factory=dict, description="User metadata, typed and bounded.")
    size: NonNegativeInt64 | None = Field(default=None, description="Bytes, when known.")
    checksum: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+:[0-9a-f]{16,128}$")] | None = Field(
        default=None, description="'<algorithm>:<hex digest>', when the bytes were local."
    )
    job_id: Token | None = Field(default=None, description="Job that produced or recorded the data.")
    workflow_id: Token | None = Field(default=None, description="Workflow of that job.")
    direction: Literal["put", "get"] | None = Field(
        default=None, description="How the bytes got here: copied onto the site (put) or off it (get)."
    )
    origin_site: Token | None = Field(default=None, description="For a copy: the site the bytes came from.")
    origin: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        default=None, description="For a copy: the path the bytes came from."
    )

    @model_validator(mode="after")
    def _copy_names_its_origin(self) -> Self:
        if (self.direction is None) != (self.origin is None):
            raise ValueError("direction and origin go together: a copy names where it came from")
        return self


class WorkspaceChanged(_Model):
    """One change to a workspace's map; the index applies them in stream order.

    ``define`` sets the roots (merged with earlier ones), ``add`` maps a logical name to a
    location, ``remove`` unmaps one location (or, without one, the name), ``delete``
    forgets the workspace.
    """

    workspace: Token = Field(description="The workspace's name.")
    site: Token = Field(description="Site of the process that made the change.")
    op: Literal["define", "add", "remove", "delete"] = Field(description="What changed.")
    roots: dict[Token, AbsPath] = Field(
        default_factory=dict, max_length=256, description="define: the workspace's root directory per site."
    )
    logical: LogicalName | None = Field(default=None, description="add/remove: the logical file name.")
    location: WorkspaceLocation | None = Field(default=None, description="add/remove: where a copy lives.")

    @model_validator(mode="after")
    def _fields_of_op(self) -> Self:
        if self.op == "define" and not self.roots:
            raise ValueError("define needs at least one root (site -> absolute path)")
        if self.op in ("add", "remove") and self.logical is None:
            raise ValueError(f"{self.op} needs the logical file name")
        if self.op == "add" and self.location is None:
            raise ValueError("add needs a location (site and path)")
        if self.op != "define" and self.roots:
            raise ValueError(f"roots belong to define, not {self.op}")
        return self


class _TriggerPayload(_Model):
    trigger_id: Token = Field(description="Id of the trigger.")
    site: Token = Field(description="Site of the engine or registrar that speaks.")
    workflow_id: Token | None = Field(default=None, description="Workflow the trigger belongs to.")


class TriggerRegistered(_TriggerPayload):
    """A trigger was accepted; ``definition`` is its full, validated definition."""

    definition: Trigger = Field(description="The trigger as registered.")

    @model_validator(mode="after")
    def _same_trigger(self) -> Self:
        if self.definition.trigger_id != self.trigger_id:
            raise ValueError("trigger_id differs from definition.trigger_id")
        return self


class TriggerDeadline(_TriggerPayload):
    """A join's ``within`` window closed; the engine decides whether that expires it."""

    firing_key: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="The firing the deadline applies to."
    )
    deadline: AwareDatetime = Field(description="When the window closed.")


class TriggerTick(_TriggerPayload):
    """A schedule's tick came; the engine that judges it starts the tick's job (once)."""

    firing_key: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="The firing of this tick: the trigger id and the tick."
    )
    tick: AwareDatetime = Field(description="The tick (a whole second, UTC).")


class TriggerFired(_TriggerPayload):
    """A trigger's condition held and its downstream job was dispatched."""

    firing_key: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="Deterministic key of this firing; claimed once in the server."
    )
    downstream_job_id: Token | None = Field(default=None, description="The job that was submitted.")
    parent_job_ids: tuple[Token, ...] = Field(default=(), description="Upstream jobs that caused the firing.")
    cause_event_ids: tuple[EventId, ...] = Field(default=(), description="Events that completed the condition.")


class TriggerExpired(_TriggerPayload):
    """A trigger will never fire: its ``within`` window passed, or its condition can no longer hold."""

    reason: ShortText = Field(description="Why it expired.")
    fallback_job_id: Token | None = Field(default=None, description="The fallback job started, if any.")
    firing_key: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="The firing that expired."
    )


class TriggerFailed(_TriggerPayload):
    """Dispatch failed for good after bounded retries."""

    reason: ShortText = Field(description="The last error.")
    attempts: NonNegativeInt64 = Field(default=0, description="How many dispatches were tried.")
    firing_key: Annotated[str, StringConstraints(max_length=512)] | None = Field(
        default=None, description="The firing that failed, if one was claimed."
    )


class TriggerCancelled(_TriggerPayload):
    """A trigger was withdrawn before it fired."""

    reason: ShortText | None = Field(default=None, description="Why, if given.")


class WorkflowDefined(_Model):
    """A workflow (a named group of jobs) was created or its properties changed."""

    workflow_id: Token = Field(description="The workflow id.")
    site: Token = Field(description="Site of the process that defined it.")
    name: Annotated[str, StringConstraints(max_length=256)] | None = Field(default=None, description="For people.")
    properties: Metadata = Field(default_factory=dict, description="Typed, bounded properties.")


class SiteStatus(StrEnum):
    UP = "UP"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"


class SiteHeartbeat(_Model):
    """A site adapter is alive (or says it is going away)."""

    site: Token = Field(description="The site.")
    adapter: Annotated[str, StringConstraints(max_length=128)] = Field(description="Adapter name.")
    status: SiteStatus = Field(default=SiteStatus.UP, description="Health as the adapter sees it.")
    interval_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Seconds until the next heartbeat."
    )
    info: ShortText | None = Field(default=None, description="Free text.")


EventData: TypeAlias = (
    JobStatus
    | DataArrival
    | TriggerRegistered
    | TriggerFired
    | TriggerExpired
    | TriggerFailed
    | TriggerCancelled
    | TriggerDeadline
    | TriggerTick
    | SiteHeartbeat
    | WorkflowDefined
    | WorkspaceChanged
)

# --------------------------------------------------------------------------- envelopes


class _Envelope(_Model):
    """CloudEvents 1.0 attributes shared by every event."""

    # Required on the wire (CloudEvents: id, source, specversion, type): an event without
    # an id would get a different invented one in every reader.  make_event fills them in.
    specversion: Literal["1.0"]
    id: EventId = Field(description="Unique id; also the JetStream Nats-Msg-Id.")
    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="URI-reference of the producer, e.g. /sites/local/engine."
    )
    time: AwareDatetime = Field(default_factory=_now, description="When the fact happened.")
    subject: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The entity the event is about (job, data or trigger id)."
    )
    datacontenttype: Literal["application/json"] = "application/json"
    schemaversion: Literal[1] = Field(default=1, description="lwfm-bus payload schema version.")
    traceparent: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="W3C trace context, passed through untouched."
    )

    kind: ClassVar[str]

    def nats_subject(self) -> str:
        """The NATS subject this event is published on (see :mod:`._subjects`)."""
        raise NotImplementedError


class JobStatusEvent(_Envelope):
    type: Literal["lwfm.job.status"]
    data: JobStatus
    kind: ClassVar[str] = "job"

    def nats_subject(self) -> str:
        d = self.data
        return subject_for(d.site, "job", d.workflow_id, d.job_id, d.state.value)


class DataEvent(_Envelope):
    type: Literal["lwfm.data.arrived"]
    data: DataArrival
    kind: ClassVar[str] = "data"

    def nats_subject(self) -> str:
        d = self.data
        return subject_for(d.site, "data", d.workflow_id, d.job_id, "arrived")


class _TriggerEnvelope(_Envelope):
    kind: ClassVar[str] = "trigger"
    detail: ClassVar[str]
    data: _TriggerPayload

    def nats_subject(self) -> str:
        d = self.data
        return subject_for(d.site, "trigger", d.workflow_id, d.trigger_id, self.detail)


class TriggerRegisteredEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.registered"]
    data: TriggerRegistered
    detail: ClassVar[str] = "registered"


class TriggerFiredEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.fired"]
    data: TriggerFired
    detail: ClassVar[str] = "fired"


class TriggerExpiredEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.expired"]
    data: TriggerExpired
    detail: ClassVar[str] = "expired"


class TriggerFailedEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.failed"]
    data: TriggerFailed
    detail: ClassVar[str] = "failed"


class TriggerCancelledEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.cancelled"]
    data: TriggerCancelled
    detail: ClassVar[str] = "cancelled"


class TriggerDeadlineEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.deadline"]
    data: TriggerDeadline
    detail: ClassVar[str] = "deadline"


class TriggerTickEvent(_TriggerEnvelope):
    type: Literal["lwfm.trigger.tick"]
    data: TriggerTick
    detail: ClassVar[str] = "tick"


class SiteHeartbeatEvent(_Envelope):
    type: Literal["lwfm.site.heartbeat"]
    data: SiteHeartbeat
    kind: ClassVar[str] = "site"

    def nats_subject(self) -> str:
        return subject_for(self.data.site, "site", None, None, "heartbeat")


class WorkflowDefinedEvent(_Envelope):
    type: Literal["lwfm.workflow.defined"]
    data: WorkflowDefined
    kind: ClassVar[str] = "workflow"

    def nats_subject(self) -> str:
        return subject_for(self.data.site, "workflow", self.data.workflow_id, None, "defined")


class WorkspaceChangedEvent(_Envelope):
    type: Literal["lwfm.workspace.changed"]
    data: WorkspaceChanged
    kind: ClassVar[str] = "workspace"

    def nats_subject(self) -> str:
        return subject_for(self.data.site, "workspace", None, self.data.workspace, self.data.op)


Event: TypeAlias = Annotated[
    JobStatusEvent
    | DataEvent
    | TriggerRegisteredEvent
    | TriggerFiredEvent
    | TriggerExpiredEvent
    | TriggerFailedEvent
    | TriggerCancelledEvent
    | TriggerDeadlineEvent
    | TriggerTickEvent
    | SiteHeartbeatEvent
    | WorkflowDefinedEvent
    | WorkspaceChangedEvent,
    Field(discriminator="type"),
]
"""Any lwfm-bus event; ``type`` selects the model."""

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

_CLASSES: tuple[type[_Envelope], ...] = (
    JobStatusEvent,
    DataEvent,
    TriggerRegisteredEvent,
    TriggerFiredEvent,
    TriggerExpiredEvent,
    TriggerFailedEvent,
    TriggerCancelledEvent,
    TriggerDeadlineEvent,
    TriggerTickEvent,
    SiteHeartbeatEvent,
    WorkflowDefinedEvent,
    WorkspaceChangedEvent,
)
_BY_PAYLOAD: dict[object, type[_Envelope]] = {cls.model_fields["data"].annotation: cls for cls in _CLASSES}


def event_classes() -> tuple[type[_Envelope], ...]:
    """Every event model, in a stable order (used to generate ``schemas/``)."""
    return _CLASSES


def event_adapter() -> TypeAdapter[Event]:
    """The one decoder for the union of all events."""
    return _EVENT_ADAPTER


def make_event(data: EventData, *, source: str, **envelope: Any) -> Event:
    """Wrap a payload in the right envelope; ``subject`` defaults to the entity id."""
    cls = _BY_PAYLOAD[type(data)]
    if "subject" not in envelope:
        envelope["subject"] = _entity_of(data)
    envelope.setdefault("id", new_id())
    envelope.setdefault("specversion", "1.0")
    event: Event = _EVENT_ADAPTER.validate_python(
        {"type": get_args(cls.model_fields["type"].annotation)[0], "source": source, "data": data, **envelope}
    )
    return event


def _entity_of(data: EventData) -> str | None:
    if isinstance(data, JobStatus):
        return data.job_id
    if isinstance(data, DataArrival):
        return data.data_id
    if isinstance(data, SiteHeartbeat):
        return data.site
    if isinstance(data, WorkflowDefined):
        return data.workflow_id
    if isinstance(data, WorkspaceChanged):
        return data.workspace
    return data.trigger_id


class DecodeFailure(StrEnum):
    """Why bytes from the wire are not an event; also the dead-letter subject token."""

    TOO_LARGE = "too-large"
    NOT_JSON = "not-json"
    UNKNOWN_TYPE = "unknown-type"
    INVALID = "invalid"
    WRONG_SUBJECT = "wrong-subject"
    UNUSABLE = "unusable"  # a valid event that a reader could not apply (it says why)


class EventDecodeError(InvalidEventError):
    """Bytes that are not a valid event; ``reason`` classifies the failure."""

    def __init__(self, reason: DecodeFailure, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {message}")


def encode_event(event: Event, max_bytes: int | None = None) -> bytes:
    """Serialise to CloudEvents structured JSON, refusing oversize events up front."""
    raw = event.model_dump_json(exclude_none=True).encode()
    if max_bytes is not None and len(raw) > max_bytes:
        raise EventTooLargeError(f"event {event.id} is {len(raw)} bytes; the bus accepts at most {max_bytes}")
    return raw


def decode_event(raw: bytes, max_bytes: int | None = None, subject: str | None = None) -> Event:
    """Parse and validate bytes from the wire, or raise :class:`EventDecodeError`.

    With ``subject`` (where the message was found), the event must be the one that
    subject names: its site, kind, workflow and entity.  Permissions are granted per
    subject, so an event claiming another site than its subject is a forgery (a site
    allowed to publish only ``lwfm.beta.>`` saying "alpha's job completed").
    """
    if max_bytes is not None and len(raw) > max_bytes:
        raise EventDecodeError(DecodeFailure.TOO_LARGE, f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        event: Event = _EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        kinds = {e["type"] for e in exc.errors()}
        if "json_invalid" in kinds or "json_type" in kinds:
            reason = DecodeFailure.NOT_JSON
        elif kinds & {"union_tag_invalid", "union_tag_not_found", "model_attributes_type", "model_type"}:
            reason = DecodeFailure.UNKNOWN_TYPE
        else:
            reason = DecodeFailure.INVALID
        raise EventDecodeError(reason, _summarise(exc)) from None
    if subject is not None and subject != (expected := event.nats_subject()):
        raise EventDecodeError(DecodeFailure.WRONG_SUBJECT, f"found on {subject}, but the event belongs on {expected}")
    return event


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    """A short, log-safe summary: field paths and messages, never the input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
