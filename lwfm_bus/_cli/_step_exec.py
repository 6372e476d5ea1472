"""``lwfm-bus step-exec``: the step runner every pipeline job runs (see :mod:`.._pipeline._stepexec`).

Every pipeline job runs it, so its start-up counts (issue #21): the step runner and the
client are imported once the arguments are parsed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .._errors import PipelineError, PipelineIssue

if TYPE_CHECKING:
    from .._config import BusConfig

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("step-exec", help="(inside pipeline jobs) run one step's command and record its outputs")
    p.add_argument("--spec", required=True, help="the run's description, JSON (written by lwfm-bus run)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=step_exec)


async def step_exec(args: argparse.Namespace, config: BusConfig) -> int:
    from pydantic import ValidationError

    from .._client import connect
    from .._pipeline._stepexec import run_step
    from .._pipeline._stepspec import StepSpec

    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise PipelineError(issues=[PipelineIssue("step-exec needs a command after --")])
    try:
        spec = StepSpec.model_validate_json(args.spec)
    except ValidationError as exc:
        raise PipelineError(issues=[PipelineIssue(f"step-exec: bad --spec: {exc.errors()[0]['msg']}")]) from None
    async with connect(config.model_copy(update={"engine": "off"}), name=f"lwfm-bus step {spec.step}") as bus:
        return await run_step(bus, spec, list(argv))
