"""Pipeline job names: made and read here only.

A pipeline runner names each job ``<pipeline>:<step-path>[<run>]@<iteration>`` (both
suffixes optional), and a gate job ``<pipeline>:<step-path>[<run>]#<why>``.  The graph's
live status and ``workflow show`` read the names back, so the format lives in one place.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["JobName", "gate_job_name", "job_name", "parse_job_name", "step_path_of"]


def job_name(pipeline: str, path: str, run: str | None, iteration: int | None) -> str:
    """The name of one run of one step: ``book-report:count/count[2]@1``."""
    return f"{pipeline}:{path}" + (f"[{run}]" if run else "") + (f"@{iteration}" if iteration is not None else "")


def gate_job_name(pipeline: str, path: str, run: str | None, why: str) -> str:
    """The name of a gate job, which stands for a condition (a loop's end, data that arrived)."""
    return f"{pipeline}:{path}" + (f"[{run}]" if run else "") + f"#{why}"


_STEP = r"[A-Za-z_][A-Za-z0-9_\-]{0,63}"
_REST = (
    rf"(?P<path>{_STEP}(?:/{_STEP})*)"
    r"(?:\[(?P<run>[^\[\]\x00-\x1f\x7f]{1,64})\])?(?:@(?P<iteration>0|[1-9][0-9]{0,8}))?"
)
_JOB_NAME = re.compile(rf"(?P<pipeline>[A-Za-z0-9_\-:@+=~^]{{1,128}}):{_REST}")
_STEP_PART = re.compile(_REST)


class JobName(NamedTuple):
    """What a pipeline runner puts in a job's name: ``book-report:count/count[2]@1``."""

    pipeline: str
    step: str  # the step path: nested steps after their parent step, joined by '/'
    run: str | None  # the fan-out run ("[...]"): a number, or a short label of the item
    iteration: int | None  # the run of a sequence or loop ("@N")


def parse_job_name(name: str | None) -> JobName | None:
    """Split ``<pipeline>:<step-path>[<run>]@<iteration>`` (both suffixes optional); None if it is not one.

    A pipeline name may itself contain ``:`` and ``@`` (it is a token); a step path cannot, so the
    path is what follows the last ``:`` that leaves a well-formed rest.
    """
    m = _JOB_NAME.fullmatch(name) if name else None
    if m is None:
        return None
    iteration = m["iteration"]
    return JobName(m["pipeline"], m["path"], m["run"], int(iteration) if iteration is not None else None)


def step_path_of(job_name: str | None, pipeline: str | None = None) -> str | None:
    """The step path a pipeline job ran for (``"count/count"``), or None for any other job -- including,
    when ``pipeline`` is given, a job of another pipeline (matched exactly, so ``a`` never claims the
    jobs of a pipeline named ``a:b``)."""
    if pipeline is None:
        parsed = parse_job_name(job_name)
        return parsed.step if parsed is not None else None
    if not job_name or not job_name.startswith(pipeline + ":"):
        return None
    m = _STEP_PART.fullmatch(job_name, len(pipeline) + 1)
    return m["path"] if m is not None else None
