"""The exception tree of lwfm-bus.

Every error the library raises on purpose derives from :class:`LwfmBusError`, so a
caller can catch one class.  Where a builtin says the same thing, the subclass mixes
it in, so ``except ValueError`` keeps working for code that does not know us::

    LwfmBusError
    ├── ConfigError (ValueError)          bad settings, bad site file, bad option
    ├── ServerStartError (RuntimeError)   the embedded nats-server did not come up
    ├── BusClosedError (RuntimeError)     the bus was used after it was closed
    ├── InvalidEventError (ValueError)    an event failed validation, on the way in or out
    │   ├── InvalidTokenError             a subject token from a user is unusable
    │   └── EventTooLargeError            an encoded event exceeds the size limit
    ├── PublishError (RuntimeError)       the server did not acknowledge an event
    ├── JobError                          a job could not be submitted / found / cancelled
    │   ├── UnknownJobError (LookupError)
    │   ├── JobTimeoutError (TimeoutError)
    │   └── JobWillNotRunError            every trigger that could start the awaited job ended otherwise
    ├── SiteError (RuntimeError)          a site adapter failed or is unknown
    ├── TriggerError (ValueError)         a trigger definition is rejected
    ├── DataError (ValueError)            bad metadata, a bad query, a failed copy
    │   └── UnknownDataError (LookupError)
    ├── WorkspaceError (ValueError)       a bad or escaping workspace path, an unknown workspace
    ├── BundleError (ValueError)          an export/import bundle is truncated, altered or not a bundle
    ├── EnvBuildError (RuntimeError)      a step's Python environment could not be built (carries pip's output)
    └── PipelineError (ValueError)        a pipeline file is refused; ``issues`` says where (file:line:col, field)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BundleError",
    "BusClosedError",
    "ConfigError",
    "DataError",
    "EnvBuildError",
    "EventTooLargeError",
    "InvalidEventError",
    "InvalidTokenError",
    "JobError",
    "JobTimeoutError",
    "JobWillNotRunError",
    "LwfmBusError",
    "PipelineError",
    "PipelineIssue",
    "PublishError",
    "ServerStartError",
    "SiteError",
    "TriggerError",
    "UnknownDataError",
    "UnknownJobError",
    "WorkspaceError",
]


class LwfmBusError(Exception):
    """Root of every error lwfm-bus raises on purpose."""


class ConfigError(LwfmBusError, ValueError):
    """Settings that cannot work: the message names the file and key where there is one."""


class ServerStartError(LwfmBusError, RuntimeError):
    """The embedded nats-server failed to start.

    ``log`` holds the server's own fatal lines, because its words are the diagnosis.
    """

    def __init__(self, message: str, log: list[str] | None = None) -> None:
        self.log = list(log or [])
        detail = "\n".join(self.log)
        super().__init__(f"{message}\n{detail}" if detail else message)


class BusClosedError(LwfmBusError, RuntimeError):
    """The bus connection is closed; open a new one with ``connect()``."""


class InvalidEventError(LwfmBusError, ValueError):
    """An event does not satisfy its schema."""


class InvalidTokenError(InvalidEventError):
    """A user-supplied subject token contains ``.``, ``*``, ``>``, whitespace, or is empty."""


class EventTooLargeError(InvalidEventError):
    """An encoded event is larger than the bus accepts."""


class PublishError(LwfmBusError, RuntimeError):
    """The server did not durably accept an event."""


class JobError(LwfmBusError):
    """A job could not be submitted, found or cancelled."""


class UnknownJobError(JobError, LookupError):
    """No job with this id is known to the bus."""


class JobTimeoutError(JobError, TimeoutError):
    """A job did not reach the awaited state in time."""


class JobWillNotRunError(JobError):
    """The awaited job has not run, and every trigger that could start it ended otherwise.

    ``trigger_id``, ``state`` (expired, failed or cancelled) and ``reason`` name the last one.
    """

    def __init__(self, job_id: str, trigger_id: str, state: str, reason: str | None) -> None:
        self.job_id, self.trigger_id, self.state, self.reason = job_id, trigger_id, state, reason
        why = f": {reason}" if reason else ""
        super().__init__(f"job {job_id} will never run: trigger {trigger_id} {state}{why}")


class SiteError(LwfmBusError, RuntimeError):
    """A site adapter failed to open or failed an operation (unknown or broken ones are ConfigError)."""


class TriggerError(LwfmBusError, ValueError):
    """A trigger definition was rejected; the message names the field."""


class DataError(LwfmBusError, ValueError):
    """Data could not be notated, found or copied: the message says which field or step."""


class UnknownDataError(DataError, LookupError):
    """No data record with this id is known to the bus."""


class WorkspaceError(LwfmBusError, ValueError):
    """A workspace change or reference was refused: unknown workspace, bad or escaping path."""


class BundleError(LwfmBusError, ValueError):
    """A bundle was refused whole (truncated, altered, not a bundle); nothing was imported."""


class EnvBuildError(LwfmBusError, RuntimeError):
    """A step's Python environment could not be created or its requirements not installed.

    ``output`` holds the tail of the installer's output, because pip's words are the diagnosis;
    the message is one line naming the requirements and pip's last error.
    """

    def __init__(self, message: str, output: list[str] | None = None) -> None:
        self.output = list(output or [])
        super().__init__(message)


@dataclass(frozen=True)
class PipelineIssue:
    """One problem in a pipeline file: where it is (as far as known) and what is wrong."""

    message: str
    path: tuple[str | int, ...] = ()
    file: str | None = None
    line: int | None = None
    """1-based."""
    column: int | None = None
    """1-based."""

    @property
    def field(self) -> str:
        """The field path as a person writes it: ``steps.split.run[1]``."""
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    def __str__(self) -> str:
        where = self.file or ""
        if self.file and self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return ": ".join(part for part in (where, self.field, self.message) if part)


class PipelineError(LwfmBusError, ValueError):
    """A pipeline file was refused: ``issues`` lists every problem found, each with its place."""

    def __init__(self, message: str | None = None, issues: Sequence[PipelineIssue] = ()) -> None:
        self.issues = list(issues) or [PipelineIssue(message or "invalid pipeline")]
        super().__init__(message or "\n".join(str(i) for i in self.issues))
