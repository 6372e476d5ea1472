"""lwfm-bus: a lightweight, event-driven workflow manager on NATS JetStream.

Everything public is exported here; modules with a leading underscore are private.
"""

from __future__ import annotations

from ._bus import DeadLetter, PublishAck, Subscription
from ._client import Bus, Job, connect
from ._config import BusConfig, EmbeddedServerConfig, default_home, load_config
from ._errors import (
    BusClosedError,
    ConfigError,
    EventTooLargeError,
    InvalidEventError,
    InvalidTokenError,
    JobError,
    JobTimeoutError,
    LwfmBusError,
    PublishError,
    ServerStartError,
    SiteError,
    TriggerError,
    UnknownJobError,
)
from ._events import (
    DataArrival,
    DataEvent,
    DecodeFailure,
    Event,
    EventData,
    EventDecodeError,
    JobStatus,
    JobStatusEvent,
    SiteHeartbeat,
    SiteHeartbeatEvent,
    SiteStatus,
    TriggerCancelled,
    TriggerCancelledEvent,
    TriggerExpired,
    TriggerExpiredEvent,
    TriggerFailed,
    TriggerFailedEvent,
    TriggerFired,
    TriggerFiredEvent,
    TriggerRegistered,
    TriggerRegisteredEvent,
    WorkflowDefined,
    WorkflowDefinedEvent,
    decode_event,
    encode_event,
    make_event,
    new_id,
)
from ._index import JobRecord, WorkflowRecord
from ._jobs import JobContext, JobDefn, Resources, Workflow
from ._jobside import current_job, emit_data, emit_info, emit_status
from ._registry import ENTRY_POINT_GROUP, SiteSpec
from ._server import EmbeddedServer
from ._sites import SiteAdapter, SiteRuntime, StatusReporter
from ._states import JobState
from ._subjects import check_token, data_filter, job_filter, workflow_filter
from ._sync import SyncJob, make_job, sync_bus, sync_close

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Bus",
    "BusClosedError",
    "BusConfig",
    "ConfigError",
    "DataArrival",
    "DataEvent",
    "DeadLetter",
    "DecodeFailure",
    "EmbeddedServer",
    "EmbeddedServerConfig",
    "Event",
    "EventData",
    "EventDecodeError",
    "EventTooLargeError",
    "InvalidEventError",
    "InvalidTokenError",
    "Job",
    "JobContext",
    "JobDefn",
    "JobError",
    "JobRecord",
    "JobState",
    "JobStatus",
    "JobStatusEvent",
    "JobTimeoutError",
    "LwfmBusError",
    "PublishAck",
    "PublishError",
    "Resources",
    "ServerStartError",
    "SiteAdapter",
    "SiteError",
    "SiteHeartbeat",
    "SiteHeartbeatEvent",
    "SiteRuntime",
    "SiteSpec",
    "SiteStatus",
    "StatusReporter",
    "Subscription",
    "SyncJob",
    "TriggerCancelled",
    "TriggerCancelledEvent",
    "TriggerError",
    "TriggerExpired",
    "TriggerExpiredEvent",
    "TriggerFailed",
    "TriggerFailedEvent",
    "TriggerFired",
    "TriggerFiredEvent",
    "TriggerRegistered",
    "TriggerRegisteredEvent",
    "UnknownJobError",
    "Workflow",
    "WorkflowDefined",
    "WorkflowDefinedEvent",
    "WorkflowRecord",
    "__version__",
    "check_token",
    "connect",
    "current_job",
    "data_filter",
    "decode_event",
    "default_home",
    "emit_data",
    "emit_info",
    "emit_status",
    "encode_event",
    "job_filter",
    "load_config",
    "make_event",
    "make_job",
    "new_id",
    "sync_bus",
    "sync_close",
    "workflow_filter",
]
