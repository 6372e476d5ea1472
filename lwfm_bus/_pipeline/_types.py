"""The small field types of the pipeline format: names, commands, counts, requirements.

Each carries its own check and, where a file may spell it two ways (a command as a
string or a list, ``after`` as one name or several, a count as a number or
``{params.n}``), its own JSON Schema, so an editor offers both spellings while the
model holds one normalised form.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import AfterValidator, BeforeValidator, Field, StrictInt, StringConstraints, WithJsonSchema

from ._sources import MAX_RUNS
from ._template import Template

__all__ = [
    "MAX_ITERATIONS",
    "MAX_STEPS",
    "NAME_PATTERN",
    "PARAM_REF",
    "After",
    "Command",
    "Count",
    "EnvName",
    "Iterations",
    "Name",
    "NestedPath",
    "Requirements",
    "Text",
]

MAX_STEPS = 1000
MAX_ITERATIONS = 10_000

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""Step, param, input and output names: they appear in placeholders, so no dots."""
Text = Annotated[str, StringConstraints(max_length=4096)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")]
PARAM_REF = re.compile(r"\{params\.([A-Za-z_][A-Za-z0-9_\-]*)\}")


def _requirement(text: str) -> str:
    try:
        return str(Requirement(text))
    except InvalidRequirement as exc:
        raise ValueError(f"not a Python requirement (PEP 508): {str(exc).splitlines()[0]}") from None


def _command(value: Any) -> Any:
    """A string is split like a POSIX shell would split it -- and then never given to one."""
    if not isinstance(value, str):
        return value
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split the command into words: {exc}") from None
    if not argv:
        raise ValueError("the command is empty")
    return argv


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _count(value: Any) -> Any:
    # A {params.NAME} known to the pipeline was replaced already (Pipeline._resolve_counts).
    if isinstance(value, str):
        m = PARAM_REF.fullmatch(value.strip())
        if m:
            raise ValueError(f"{value.strip()} names no param of this pipeline")
        raise ValueError("expected a whole number, or {params.NAME} naming a param")
    return value


_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
Command = Annotated[
    tuple[Template, ...],
    BeforeValidator(_command),
    Field(min_length=1, max_length=4096),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1}, _STRINGS]}),
]
After = Annotated[
    tuple[Name, ...],
    BeforeValidator(_one_or_many),
    Field(max_length=MAX_STEPS),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
Requirements = Annotated[
    tuple[Annotated[str, StringConstraints(max_length=1024), AfterValidator(_requirement)], ...],
    Field(max_length=256),
]


def _count_schema(upper: int) -> WithJsonSchema:
    pattern = r"^\{params\.[A-Za-z_][A-Za-z0-9_\-]*\}$"
    return WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": upper}, {"type": "string", "pattern": pattern}]}
    )


Count = Annotated[StrictInt, BeforeValidator(_count), Field(ge=1, le=MAX_RUNS), _count_schema(MAX_RUNS)]
"""A run count: a whole number, or ``{params.NAME}`` (replaced by the param's value when the file is read)."""
Iterations = Annotated[
    StrictInt, BeforeValidator(_count), Field(ge=1, le=MAX_ITERATIONS), _count_schema(MAX_ITERATIONS)
]
NestedPath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00\\]*\.ya?ml$")]
