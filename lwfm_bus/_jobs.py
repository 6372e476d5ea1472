"""What a job is: its definition (what to run) and its context (who it is).

A definition is data a user writes or a pipeline generates; it never names a shell
implicitly.  ``argv`` runs a program directly; a ``shell`` string runs through
``/bin/sh -c`` only because the user marked it as shell, so a value that came over
the wire is never interpreted by a shell by accident.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ._ids import new_id
from ._limits import PositiveInt64
from ._retry import MAX_ATTEMPTS, RetryPolicy, grown, retry_id
from ._states import JobState
from ._subjects import Token

__all__ = ["JobContext", "JobDefn", "Resources", "RetryPolicy", "Workflow", "new_job_id"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
ArgText = Annotated[str, StringConstraints(max_length=65536)]


def new_job_id() -> str:
    return new_id()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Frozen):
    """Resource hints; each site maps what it understands (Slurm: sbatch options)."""

    nodes: PositiveInt64 | None = None
    tasks: PositiveInt64 | None = None
    cpus_per_task: PositiveInt64 | None = None
    memory_mb: PositiveInt64 | None = None
    time_limit_s: PositiveInt64 | None = None
    partition: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.,\-]{1,64}$")] | None = None
    account: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")] | None = None
    gpus: PositiveInt64 | None = None

    def after(self, policy: RetryPolicy, native_state: str | None) -> Resources:
        """What the next attempt asks for, after one that ended in ``native_state``."""
        growth = policy.growth(native_state)
        if growth is None:
            return self
        return self.model_copy(
            update={
                "memory_mb": grown(self.memory_mb, growth.memory_mb),
                "time_limit_s": grown(self.time_limit_s, growth.time_limit_s),
                "cpus_per_task": grown(self.cpus_per_task, growth.cpus_per_task),
            }
        )


class JobDefn(_Frozen):
    """What to run.  Exactly one of ``argv`` and ``shell``."""

    argv: tuple[ArgText, ...] | None = Field(default=None, description="Program and arguments, run directly.")
    shell: ArgText | None = Field(default=None, description="A shell command line, run by /bin/sh -c.")
    name: Annotated[str, StringConstraints(max_length=256)] | None = Field(default=None, description="For people.")
    env: dict[str, ArgText] = Field(default_factory=dict, description="Extra environment variables.")
    cwd: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None, description="Working directory on the site."
    )
    resources: Resources = Field(default_factory=Resources, description="Resource hints.")
    retry: RetryPolicy | None = Field(default=None, description="Whether and how a failed run is run again.")

    @model_validator(mode="after")
    def _one_command(self) -> Self:
        if (self.argv is None) == (self.shell is None):
            raise ValueError("give exactly one of 'argv' (a list) or 'shell' (a string marked as shell)")
        if self.argv is not None and not self.argv:
            raise ValueError("'argv' must name a program")
        for key in self.env:
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"env: {key!r} is not a valid environment variable name")
        for text in (*(self.argv or ()), self.shell or "", *self.env.values()):
            if "\x00" in text:
                raise ValueError("NUL bytes cannot be passed to a process")
        return self

    @classmethod
    def of(cls, command: str | list[str] | tuple[str, ...], **kw: Any) -> JobDefn:
        """``JobDefn.of(["echo", "hi"])`` runs argv; ``JobDefn.of("a | b")`` is shell, said explicitly."""
        if isinstance(command, str):
            return cls(shell=command, **kw)
        return cls(argv=tuple(command), **kw)

    def command(self) -> list[str]:
        """The argv to execute: the shell form is spelled out, never implied."""
        if self.shell is not None:
            return ["/bin/sh", "-c", self.shell]
        assert self.argv is not None
        return list(self.argv)

    def label(self) -> str:
        return self.name or (self.argv[0] if self.argv else "sh")


class JobContext(_Frozen):
    """Who a job is: its identity on the bus and on its site."""

    job_id: Token = Field(default_factory=new_job_id)
    site: Token = "local"
    workflow_id: Token | None = None
    name: Annotated[str, StringConstraints(max_length=256)] | None = None
    native_id: Annotated[str, StringConstraints(max_length=256)] | None = None
    parent_ids: tuple[Token, ...] = ()
    attempt: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] = Field(
        default=1, description="Which attempt of the logical job this is (1: the first)."
    )
    attempt_of: Token | None = Field(default=None, description="The logical job's id, for attempts after the first.")
    retry: RetryPolicy | None = Field(
        default=None,
        description=(
            "The job's retry policy, carried with who it is so that every process reporting its end "
            "(the launching agent, an adopting one) marks that end alike."
        ),
    )

    @property
    def logical_id(self) -> str:
        """The job every attempt stands for: the first attempt's id."""
        return self.attempt_of or self.job_id

    def attempt_marks(self, state: JobState, native_state: str | None, exit_code: int | None) -> dict[str, Any]:
        """What this job's status says of its attempts: which one it is, and on a retried end, the next.

        A pure function of the context and the end, so every process that reports one
        end (each under the same fixed event id: the launching agent, an adopting one,
        a callback from the job's host) says the same.  The :class:`JobStatus` fields.
        """
        if self.retry is None and self.attempt == 1:
            return {}
        marks: dict[str, Any] = {"attempt": self.attempt, "attempt_of": self.attempt_of}
        if self.retry is not None and self.retry.retries(self.attempt, state, native_state, exit_code):
            following = retry_id(self.logical_id, self.attempt + 1)
            marks["retry_next"] = following
            marks["retry_delay_s"] = self.retry.delay_s(self.attempt, following)
        return marks


class Workflow(_Frozen):
    """A named group of jobs with properties."""

    workflow_id: Token = Field(default_factory=new_id)
    name: Annotated[str, StringConstraints(max_length=256)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
