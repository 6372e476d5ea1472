"""Shared printers and argument parsers: what more than one command word uses.

A command module keeps the helpers only it needs; whatever two words share lives here,
so no command module reaches into another's private names.

Values on the command line (``--meta``, ``--where``) are typed the way JSON reads them --
``step=3`` is the number 3, ``ok=true`` a boolean, ``tags=["a","b"]`` a list -- and anything
that is not JSON is a string; quote it as JSON (``step='"3"'``) to force a string.

Text that came from outside -- a job's info, a job or workflow name, a data location, a metadata
value, a reason, a path the user gave -- goes through :func:`shown` before it is printed for
people, so a control character can neither forge an output line nor drive the terminal; JSON
columns go through :func:`shown_json`.  ``--json`` output needs neither: JSON escapes them already.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .._config import BusConfig
from .._errors import ConfigError, DataError, PipelineError
from .._events import SiteHeartbeatEvent, SiteStatus
from .._federation import load_federation
from .._limits import load_json_bounded
from .._pipeline import Pipeline, load_pipeline, parse_override
from .._query import DataRecord
from .._secrets import credential_like
from .._sites._registry import discover_adapters, load_sites
from ._shown import shown, shown_json

__all__ = [
    "add_set_option",
    "configured_sites",
    "credential_warnings",
    "data_json",
    "job_json",
    "load_or_report",
    "parse_meta",
    "parse_where",
    "pipeline_credential_warnings",
    "print_issues",
    "print_record",
    "shown",
    "shown_json",
]

_RECORD: TypeAdapter[DataRecord] = TypeAdapter(DataRecord)
_CONDITION = re.compile(r"^(?P<key>[^=~<>?]+?)(?P<op>>=|<=|=|~|>|<|\?)(?P<value>.*)$", re.DOTALL)
_RANGE_OPS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


# -- metadata on the command line: notate, put, get (--meta) and find (--where) --


def _typed(text: str) -> Any:
    """JSON if it parses (objects and null too: the models then say why they are refused), else text."""
    try:
        return load_json_bounded(text, "value")
    except ValueError:  # not JSON, too deep, or an integer of thousands of digits
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
        print(shown(record.data_id))


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
        print(shown(issue), file=sys.stderr)


def configured_sites(config: BusConfig) -> frozenset[str]:
    """The sites a pipeline step may name here: the sites file's (``local`` always), and a federation's members.

    The same names ``run`` can reach: a step on any other site is refused at its line
    (``validate``, ``run``) rather than failing once the run has started.
    """
    names = set(load_sites(config.sites_path(), discover_adapters(), home_site=config.site))
    if config.federation_file is not None:
        federation = load_federation(config.federation_file)
        names.update(name for member in federation.sites for name in federation.names_of(member))
    return frozenset(names)


def load_or_report(file: Path, overrides: list[str], config: BusConfig | None = None) -> Pipeline | None:
    """The pipeline with ``--set`` applied, or None once its problems are printed (the caller exits 2).

    With ``config``, a step on a site that is not configured there is one of the problems.
    """
    sites = functools.partial(configured_sites, config) if config is not None else None
    sites_file = config.sites_path() if config is not None else None
    try:
        return load_pipeline(file, dict(parse_override(text) for text in overrides), sites=sites, sites_file=sites_file)
    except PipelineError as exc:
        print_issues(exc)
        return None


def credential_warnings(where: str, env: dict[str, str]) -> list[str]:
    """A warning for each plain env value whose name looks like a credential (``API_TOKEN``, ``db_password``).

    Said at ``validate``, ``run`` and ``submit``: such a value is published with the job
    and stays in the stream, in bundles and at every federated site; ``secret:NAME``
    keeps it on the site that runs the job.  The value itself is never shown.
    """
    return [
        f"lwfm-bus: warning: {shown(where)}{shown(name)} looks like a credential, and a plain value is published "
        f"with the job; store it with 'lwfm-bus secret set {shown(name)}' and write secret:{shown(name)} instead"
        for name in credential_like(env)
    ]


def pipeline_credential_warnings(file: Path, pipeline: Pipeline) -> list[str]:
    """:func:`credential_warnings` for every step's ``env:`` (top-level steps; a nested file is checked on its own)."""
    out = []
    for name, step in pipeline.steps.items():
        env = {key: t.text for key, t in step.env.items()}
        out += credential_warnings(f"{file}: steps.{name}.env.", env)
    return out


def health_note(beat: SiteHeartbeatEvent | None) -> str | None:
    """``DOWN since 10:02:11: cannot be opened: ...`` for a site that is not UP, else None.

    The heartbeat's time is when its health began: an agent publishes only changes.
    """
    if beat is None or beat.data.status is SiteStatus.UP:
        return None
    since = beat.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    why = f": {shown(beat.data.info)}" if beat.data.info else ""
    return f"{beat.data.status.value} since {since}{why}"


def final_line(status: Any) -> str:
    """How a job ended, in one line: ``COMPLETE exit=0``; a job that did not complete says why,
    as its site said it (``FAILED exit=-15 (TIMEOUT: time limit of 1s reached ...)``)."""
    line = status.state.value + (f" exit={status.exit_code}" if status.exit_code is not None else "")
    if status.state.value != "COMPLETE":
        why = status.native_info or status.info
        if why == f"exit code {status.exit_code}":
            why = None  # said already
        native = status.native_state if status.native_state and status.native_state.isupper() else None
        detail = ": ".join(x for x in (native, why) if x)
        if detail:
            line += f" ({detail})"
    attempt = getattr(status, "attempt", None)
    if attempt is not None and attempt > 1:
        line += f" [attempt {attempt}: job {status.job_id}]"  # its logs are that job's
    return shown(line)


def missing_extra(extra: str, what: str, exc: ImportError) -> ConfigError:
    """``the dashboard needs the 'ui' extra (uvicorn is missing): pip install 'lwfm-bus[ui]'``."""
    missing = (exc.name or "a dependency").split(".")[0]
    return ConfigError(f"{what} the {extra!r} extra ({missing} is missing): pip install 'lwfm-bus[{extra}]'")
