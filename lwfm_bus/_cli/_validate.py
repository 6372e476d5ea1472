"""``lwfm-bus validate``: check pipeline files without a bus, the way an editor or CI would.

Valid files print one summary line each (steps and their LAS scenarios); any problem
prints as ``FILE:LINE:COL: field.path: message`` on stderr, every problem of every
file, and the exit code is 2.  A step's site must be one this home configures (its
sites file, and a federation's members), as ``run`` needs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from .._config import BusConfig
from .._errors import PipelineError
from .._pipeline import Pipeline, load_pipeline, parse_override
from ._print import add_set_option, configured_sites, pipeline_credential_warnings, print_issues, shown

__all__ = ["register"]

_FAN = {"once": "", "parallel": "parallel", "for_each": "for each", "product": "product", "on_data": "each arrival"}


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check pipeline files (no bus needed)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="pipeline files (.yaml)")
    add_set_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.set_defaults(func=validate)


def _step_label(pipeline: Pipeline, name: str) -> str:
    step = pipeline.steps[name]
    parts = [_FAN[step.fan_out] or ("several inputs" if len(step.inputs) > 1 else "")]
    if step.parallel is not None:
        parts[0] += f" {step.parallel}"
    if step.sequence is not None:
        parts.append(f"{step.sequence} in sequence")
    if step.until is not None:
        parts.append(f"until, at most {step.max_iterations}")
    if step.pipeline is not None:
        parts.append(f"nested {shown(step.pipeline)}")
    detail = ", ".join(p for p in parts if p)
    return f"{shown(name)} [{step.scenario}{': ' + detail if detail else ''}]"


def summary(file: Path, pipeline: Pipeline) -> str:
    """``FILE: ok: NAME, N steps: a [1], b [3: for each]``: the scenario number of each step in brackets."""
    steps = ", ".join(_step_label(pipeline, name) for name in pipeline.steps)
    count = len(pipeline.steps)
    return f"{shown(file)}: ok: {shown(pipeline.name)}, {count} step{'s' if count != 1 else ''}: {steps}"


def _as_json(file: Path, pipeline: Pipeline | None, error: PipelineError | None) -> dict[str, Any]:
    if pipeline is None:
        assert error is not None
        issues = [
            {"file": i.file, "line": i.line, "column": i.column, "path": i.field, "message": i.message}
            for i in error.issues
        ]
        return {"file": str(file), "valid": False, "issues": issues}
    steps = [
        {
            "name": name,
            "scenario": step.scenario,
            "fan_out": step.fan_out,
            "repeat": step.repeat,
            "after": list(step.after),
            "nested": step.pipeline,
        }
        for name, step in pipeline.steps.items()
    ]
    return {"file": str(file), "valid": True, "name": pipeline.name, "steps": steps}


async def validate(args: argparse.Namespace, config: BusConfig) -> int:
    """Never connects: ``config`` gives only the configured sites, the pipeline is checked on its own."""
    overrides = dict(parse_override(text) for text in args.overrides)
    # Read once, and only if a file names a site: it imports every adapter plugin.
    sites = functools.cache(functools.partial(configured_sites, config))
    sites_file = config.sites_path()
    status = 0
    for file in args.files:
        pipeline: Pipeline | None = None
        error: PipelineError | None = None
        try:
            pipeline = load_pipeline(file, overrides, sites=sites, sites_file=sites_file)
        except PipelineError as exc:
            error, status = exc, 2
            print_issues(exc)
        if pipeline is not None:
            for warning in pipeline_credential_warnings(file, pipeline):
                print(warning, file=sys.stderr)
        if args.json:
            print(json.dumps(_as_json(file, pipeline, error)))
        elif pipeline is not None:
            print(summary(file, pipeline))
    return status
