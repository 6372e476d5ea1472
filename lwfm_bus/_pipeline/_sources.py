"""Where a step's runs come from and when a loop stops: the small one-key models of a step.

``for_each: {glob: ...}``, ``{list: [...]}`` or ``{query: {...}}``; ``until:
{exit_code: 0}``, ``{file: ...}``, ``{metadata: {where: ...}}`` or ``{expr: ...}``.
Each form is its own model, chosen by its single key, so the compiler gets a typed
object (``isinstance(src, GlobSource)``) and a person gets one clear error ("give
exactly one of glob, list, query") instead of a report from every member of a union.

Data predicates are the ones data-flow triggers and ``find`` use
(:data:`lwfm_bus._triggers.Predicate`, :class:`lwfm_bus._query.DataQuery`), so a
condition can be tried with ``lwfm-bus find`` before it is put in a pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, StrictInt, Tag, WithJsonSchema
from pydantic_core import PydanticCustomError

from .._expr import Expr
from .._meta import MAX_STRING, MetaKey
from .._query import DataQuery
from .._subjects import Token
from .._triggers import MAX_SIGNATURE_KEYS, Predicate
from ._template import Template

__all__ = [
    "MAX_RUNS",
    "QUERY_ITEM_FIELDS",
    "UNTIL_NAMES",
    "DataMatch",
    "GlobSource",
    "ListSource",
    "OnData",
    "QuerySource",
    "Scalar",
    "Source",
    "Until",
    "UntilExitCode",
    "UntilExpr",
    "UntilFile",
    "UntilMetadata",
]

MAX_RUNS = 10_000
"""Most runs one step may fan out to (and the largest parallel/sequence count)."""

QUERY_ITEM_FIELDS = frozenset({"location", "site", "data_id"})
"""What ``{item.X}`` offers for a data record (besides ``{item.meta.KEY}``); ``{item}`` is its location."""

UNTIL_NAMES = frozenset({"exit_code", "iteration", "metadata", "output"})
"""Names an ``until.expr`` may use: the run's exit code, its 0-based iteration, the merged metadata of the data
it notated, and its standard output as stripped text (a runner binds at most the last ``MAX_STRING`` characters
of :mod:`._expr`, the longest string an expression accepts)."""


def _scalar(value: Any) -> bool | int | float | str:
    # One check with one message: a union of four types would report four errors.
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, str) and len(value) <= MAX_STRING:
        return value
    raise PydanticCustomError("scalar", "expected a string, a number or true/false")


Scalar = Annotated[
    bool | int | float | str,
    PlainValidator(_scalar),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
"""A param value or a list item: text (at most 4096 characters), a finite number, or a boolean."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataMatch(_Model):
    """Data whose metadata satisfies every predicate of ``where``."""

    where: dict[MetaKey, Predicate] = Field(
        min_length=1,
        max_length=MAX_SIGNATURE_KEYS,
        description="Metadata key -> a value (equality) or {op: glob|range|present, ...}; all must hold.",
    )
    site: Token | None = Field(default=None, description="Only data on this site.")


class OnData(DataMatch):
    """A data-flow dependency: the step runs when matching data arrives."""

    fire: Literal["once", "each"] = Field(
        default="once", description="once: one run in all; each: one run per arrival ({item} is the data)."
    )
    existing: Literal["include", "ignore"] = Field(
        default="include", description="Whether data that arrived before the pipeline started counts."
    )


class GlobSource(_Model):
    """One run per file matching a pattern."""

    glob: Template = Field(
        description="A file pattern (*, ?, [abc], ** for any depth) relative to the step's working directory; "
        "{item} is a matching path. Matching nothing is an error when the step runs."
    )

    def size(self) -> int | None:
        return None


class ListSource(_Model):
    """One run per listed value."""

    values: tuple[Scalar, ...] = Field(
        alias="list", min_length=1, max_length=MAX_RUNS, description="The values; {item} is one of them."
    )

    def size(self) -> int | None:
        return len(self.values)


class QuerySource(_Model):
    """One run per data record the metadata repository finds."""

    query: DataQuery = Field(
        description="The same query as `lwfm-bus find`; {item} is a record's location, {item.meta.KEY} its metadata."
    )

    def size(self) -> int | None:
        return None


def _by_key(keys: tuple[str, ...], classes: tuple[type[BaseModel], ...]) -> Callable[[Any], str | None]:
    def which(value: Any) -> str | None:
        if isinstance(value, dict):
            present = [k for k in keys if k in value]
            return present[0] if len(present) == 1 else None
        for key, cls in zip(keys, classes, strict=True):
            if isinstance(value, cls):
                return key
        return None

    return which


Source = Annotated[
    Annotated[GlobSource, Tag("glob")] | Annotated[ListSource, Tag("list")] | Annotated[QuerySource, Tag("query")],
    Discriminator(
        _by_key(("glob", "list", "query"), (GlobSource, ListSource, QuerySource)),
        custom_error_type="one_of",
        custom_error_message="give exactly one of: glob, list, query",
    ),
]
"""Where the inputs of a for_each (or of one product axis) come from."""


class UntilExitCode(_Model):
    """Stop when a run exits with this code (another code means: run again)."""

    exit_code: Annotated[StrictInt, Field(ge=0, le=255)] = Field(description="The exit code that ends the loop.")


class UntilFile(_Model):
    """Stop when a run has left this file behind."""

    file: Template = Field(description="A path relative to the step's working directory.")


class UntilMetadata(_Model):
    """Stop when a run has notated data matching a condition."""

    metadata: DataMatch = Field(description="The condition on the data the run notated.")


class UntilExpr(_Model):
    """Stop when an expression over the run's results is true."""

    expr: Expr = Field(
        description="E.g. 'metadata.loss < 0.01' or 'float(output) < 1e-9'; names: exit_code, iteration, "
        "metadata, output. Functions: len abs min max round int float str bool."
    )


Until = Annotated[
    Annotated[UntilExitCode, Tag("exit_code")]
    | Annotated[UntilFile, Tag("file")]
    | Annotated[UntilMetadata, Tag("metadata")]
    | Annotated[UntilExpr, Tag("expr")],
    Discriminator(
        _by_key(("exit_code", "file", "metadata", "expr"), (UntilExitCode, UntilFile, UntilMetadata, UntilExpr)),
        custom_error_type="one_of",
        custom_error_message="give exactly one of: exit_code, file, metadata, expr",
    ),
]
"""When an ``until`` loop stops."""
