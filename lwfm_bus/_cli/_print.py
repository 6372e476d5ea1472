"""Shared printers and argument parsers: what more than one command word uses.

A command module keeps the helpers only it needs; whatever two words share lives here,
so no command module reaches into another's private names.

Values on the command line (``--meta``, ``--where``) are typed the way JSON reads them --
``step=3`` is the number 3, ``ok=true`` a boolean, ``tags=["a","b"]`` a list -- and anything
that is not JSON is a string; quote it as JSON (``step='"3"'``) to force a string.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .._errors import DataError, PipelineError
from .._pipeline import Pipeline, load_pipeline, parse_override
from .._query import DataRecord

__all__ = [
    "add_set_option",
    "data_json",
    "job_json",
    "load_or_report",
    "parse_meta",
    "parse_where",
    "print_issues",
    "print_record",
]

_RECORD: TypeAdapter[DataRecord] = TypeAdapter(DataRecord)
_CONDITION = re.compile(r"^(?P<key>[^=~<>?]+?)(?P<op>>=|<=|=|~|>|<|\?)(?P<value>.*)$", re.DOTALL)
_RANGE_OPS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


# -- metadata on the command line: notate, put, get (--meta) and find (--where) --


def _typed(text: str) -> Any:
    """JSON if it parses (objects and null too: the models then say why they are refused), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_meta(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, typed (see the module docstring)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--meta {item!r}: expected key=value")
        out[key] = _typed(value)
    return out


def parse_where(items: list[str], present: list[str]) -> dict[str, Any]:
    """``--where`` conditions to a signature: ``k=v``, ``k~glob``, ``k>=n`` (ranges merge), ``k?``."""
    where: dict[str, Any] = {key: {"op": "present"} for key in present}
    for item in items:
        m = _CONDITION.match(item)
        if m is None:
            raise DataError(f"--where {item!r}: expected key=value, key~glob, key>=n, key<n (...) or key?")
        key, op, value = m["key"], m["op"], m["value"]
        if op == "?":
            if value:
                raise DataError(f"--where {item!r}: nothing may follow '?'")
            predicate: dict[str, Any] = {"op": "present"}
        elif op == "~":
            predicate = {"op": "glob", "pattern": value}
        elif op == "=":
            predicate = {"op": "eq", "value": _typed(value)}
        else:
            number = _typed(value)
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise DataError(f"--where {item!r}: {op} needs a number, not {value!r}")
            previous = where.get(key)
            if previous is not None and previous.get("op") == "range":
                predicate = {**previous, _RANGE_OPS[op]: number}
            else:
                predicate = {"op": "range", _RANGE_OPS[op]: number}
        if key in where and not (predicate["op"] == "range" and where[key].get("op") == "range"):
            raise DataError(f"--where: two conditions on {key!r}; one key takes one condition (ranges merge)")
        where[key] = predicate
    return where


# -- data records and jobs: notate, put, get print a record; data show and workflow show a document --


def print_record(record: DataRecord, as_json: bool) -> None:
    """The record as JSON (``--json``), or just its id."""
    if as_json:
        print(_RECORD.dump_json(record).decode())
    else:
        print(record.data_id)


def data_json(record: DataRecord) -> dict[str, Any]:
    """A data record as plain JSON values, to embed in a larger document."""
    doc: dict[str, Any] = json.loads(_RECORD.dump_json(record))
    return doc


def job_json(job: Any) -> dict[str, Any]:
    """The fields of a job record that the data and workflow documents show."""
    return {
        "job_id": job.job_id,
        "site": job.site,
        "workflow_id": job.workflow_id,
        "name": job.name,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "parent_ids": list(job.parent_ids),
    }


# -- pipeline files: validate, run and graph read them alike --


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set NAME=VALUE``, the same for every command that reads a pipeline."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a param (value read as YAML: 3, 1.5, true, text); repeatable",
    )


def print_issues(error: PipelineError) -> None:
    """Every problem, one ``FILE:LINE:COL: field: message`` line each, on stderr."""
    for issue in error.issues:
        print(issue, file=sys.stderr)


def load_or_report(file: Path, overrides: list[str]) -> Pipeline | None:
    """The pipeline with ``--set`` applied, or None once its problems are printed (the caller exits 2)."""
    try:
        return load_pipeline(file, dict(parse_override(text) for text in overrides))
    except PipelineError as exc:
        print_issues(exc)
        return None
