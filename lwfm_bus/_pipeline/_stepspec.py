"""What the compiler tells the step runner about one run: the ``--spec`` of ``lwfm-bus step-exec``.

It travels in the job's argv, so the step runner validates it like anything else
from outside: a job's command line can be edited by whoever can submit jobs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._subjects import Token

__all__ = ["StepSpec", "UntilSpec"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UntilSpec(_Model):
    """A loop's stop condition, rendered for one iteration."""

    kind: Literal["exit_code", "file", "metadata", "expr"]
    exit_code: int | None = None
    file: str | None = None
    where: dict[str, Any] | None = None
    site: Token | None = None
    expr: str | None = Field(default=None, max_length=4096)


class StepSpec(_Model):
    """One run of one step."""

    pipeline: Token = Field(description="The top pipeline's name.")
    step: str = Field(max_length=1024, description="The step's path, e.g. count/count.")
    unit: Token = Field(description="This run's unit (one fan-out run, across its iterations).")
    label: str = Field(default="", max_length=256, description="The fan-out label, e.g. 3 or 2.1.")
    run: Token = Field(description="The pipeline run: its workflow id.")
    iteration: int | None = Field(default=None, ge=0, description="The sequence or loop iteration.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Rendered inputs (values or paths).")
    outputs: dict[str, str] = Field(default_factory=dict, description="Rendered output paths.")
    until: UntilSpec | None = None
    max_iterations: int | None = Field(default=None, ge=1)
    per_arrival: bool = Field(default=False, description="Run per arriving data: {item...} slots to fill in.")
    env_digest: str | None = Field(default=None, max_length=128, description="Digest of the step's environment.")
