"""The step runner: what every pipeline job actually runs, around the step's own command.

``lwfm-bus step-exec --spec JSON -- CMD...`` runs inside the job, on the job's site:

1. It derives the run's *key* from what the run depends on: the pipeline, step, run
   label and iteration, the command line, the input values and the content of every
   input that is a local file or directory.
2. If every declared output is already recorded under that key (metadata
   ``lwfm_key``/``lwfm_output``) and still on disk with the recorded checksum, the
   command is not run again: that is how a rerun skips finished work, and why a step
   whose upstream produced new content runs again (its key changed).
3. Otherwise it runs CMD (its stdout is passed through and its tail kept), and on
   success notates each declared output under the key.
4. In a loop it judges the stop condition and notates a marker (``lwfm_loop: again`` or
   ``done``) that the pipeline's data-flow triggers wait for: the next iteration, or the
   gate that stands for the finished loop.

The exit code is CMD's, except in a loop stopped by exit code (another code means
"again", not failure) and when the loop runs out of iterations (3).  A CMD that cannot be
started is one line on stderr (``command not found: solvr``) and a shell's code (127, 126).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._client import Bus
from .._errors import PipelineError
from .._events import make_event
from .._expr import compile_expr
from .._identity import TRIGGER_DATA_ENV, calling_job, file_checksum
from .._jobside import status_event
from .._states import JobState
from ._stepspec import StepSpec

__all__ = ["run_step"]

EXHAUSTED = 3
UP_TO_DATE = "up to date: outputs recorded for the same inputs"
_TAIL = 10_000


def _digest_path(path: Path) -> str | None:
    """Content digest of a local file or directory tree (None if it is neither)."""
    if path.is_file():
        return file_checksum(path)[0]
    if path.is_dir():
        h = hashlib.sha256()
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(sub.relative_to(path)).encode() + b"\0" + file_checksum(sub)[0].encode() + b"\0")
        return "tree:" + h.hexdigest()
    return None


_ARGV_FILE_LIMIT = 64 * 1024 * 1024


def _argv_files(argv: list[str], cwd: Path, outputs: set[str]) -> dict[str, str]:
    """Digests of the command's words that name files here (its script, an ``{item}`` file...).

    Not its outputs: they exist only after a first run, and they are checked on their own.
    """
    out = {}
    for word in argv:
        if not word or len(word) > 4096 or "\0" in word or word in outputs:
            continue
        path = cwd / word
        with contextlib.suppress(OSError, ValueError):
            if path.is_file() and path.stat().st_size <= _ARGV_FILE_LIMIT:
                out[word] = file_checksum(path)[0]
    return out


def run_key(spec: StepSpec, argv: list[str], cwd: Path) -> str:
    """What this run's outputs depend on, as one digest (computed in the job, when inputs exist).

    The command line, the step's environment, the inputs (with the content of those
    that are files or directories here), the content of files the command names (its
    script), and how the step repeats.  Anything else a command reads is not seen:
    declare it as an input.
    """
    inputs = {}
    for name, value in sorted(spec.inputs.items()):
        path = cwd / value
        inputs[name] = [value, _digest_path(path) if value and len(value) < 4096 else None]
    doc = {
        "pipeline": spec.pipeline,
        "step": spec.step,
        "label": spec.label,
        "iteration": spec.iteration,
        "argv": argv,
        "argv_files": _argv_files(argv, cwd, set(spec.outputs.values())),
        "env": spec.env_digest,
        "inputs": inputs,
        "until": spec.until.model_dump(mode="json") if spec.until else None,
        "max_iterations": spec.max_iterations,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


async def _recorded(bus: Bus, spec: StepSpec, key: str, cwd: Path) -> dict[str, Any] | None:
    """The metadata of the recorded outputs, if every output is recorded for ``key`` and unchanged."""
    if not spec.outputs:
        return None
    found: dict[str, Any] = {}
    for name, rel in spec.outputs.items():
        page = await bus.find({"lwfm_key": key, "lwfm_output": name}, limit=1, descending=True)
        if not page.records:
            return None
        record = page.records[0]
        path = cwd / rel
        if not path.exists():
            return None
        if path.is_file() and record.checksum and record.checksum != file_checksum(path)[0]:
            return None
        if path.is_dir() and record.metadata.get("lwfm_tree") != _digest_path(path):
            return None
        found = dict(record.metadata)
    return found


NOT_FOUND, NOT_RUNNABLE = 127, 126  # what a shell answers for a command it cannot find, or cannot run


class _NotStarted(Exception):
    """The command could not be started (said on stderr); ``code`` is the step's exit code.

    It fails the step even in a loop stopped by exit code: no later iteration would start it either.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _cannot_start(argv: list[str], exc: OSError) -> tuple[int, str]:
    """The exit code and the one line a shell would give for a command that could not be started.

    ``command not found: solvr`` (127), as the local site's wrapper says it for a plain job;
    ``permission denied: ./run.sh`` (126); anything else with the system's reason (126).
    """
    name = argv[0]
    if isinstance(exc, FileNotFoundError) and exc.filename in (None, name):
        return NOT_FOUND, f"command not found: {name}"
    if isinstance(exc, PermissionError) and exc.filename in (None, name):
        return NOT_RUNNABLE, f"permission denied: {name}"
    where = f" ({exc.filename})" if exc.filename not in (None, name) else ""
    return NOT_RUNNABLE, f"cannot run {name}: {exc.strerror or exc}{where}"


async def _run_command(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run CMD, passing its output through; its exit code and the tail of its stdout.

    A command that cannot be started is one line on stderr, never a traceback (the line is
    what ``run`` shows), and :class:`_NotStarted` with a shell's exit code.
    """
    try:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, stdout=asyncio.subprocess.PIPE)
    except OSError as exc:
        code, line = _cannot_start(argv, exc)
        print(line, file=sys.stderr, flush=True)
        raise _NotStarted(code) from None
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, forward, signum)
    tail: deque[bytes] = deque()
    size = 0
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        tail.append(chunk)
        size += len(chunk)
        while size - len(tail[0]) > _TAIL:
            size -= len(tail.popleft())
    code = await proc.wait()
    if code < 0:  # killed by a signal: report it the way a shell does
        code = 128 - code
    return code, b"".join(tail)[-_TAIL:].decode(errors="replace").strip()


async def _verdict(bus: Bus, spec: StepSpec, code: int, output: str, cwd: Path) -> bool:
    """Whether the loop's stop condition holds after this iteration."""
    until = spec.until
    assert until is not None
    if until.kind == "exit_code":
        return code == until.exit_code
    if until.kind == "file":
        return (cwd / (until.file or "")).exists()
    job = calling_job()
    if job is None:  # outside a job nothing was notated by "this run"
        return False if until.kind == "metadata" else _evaluate(spec, code, output, {})
    if until.kind == "metadata":
        mine = await bus.find(until.where or {}, job_id=job.job_id, site=until.site, limit=1)
        return bool(mine.records)
    metadata: dict[str, Any] = {}
    for record in (await bus.find({}, job_id=job.job_id, limit=1000)).records:
        metadata.update(record.metadata)
    return _evaluate(spec, code, output, metadata)


def _evaluate(spec: StepSpec, code: int, output: str, metadata: Mapping[str, Any]) -> bool:
    assert spec.until is not None
    variables: Mapping[str, Any] = {
        "exit_code": code,
        "iteration": spec.iteration or 0,
        "metadata": metadata,
        "output": output,
    }
    return bool(compile_expr(spec.until.expr or "False").evaluate(variables))


async def _resolved(bus: Bus, spec: StepSpec) -> StepSpec:
    """Inputs and outputs given as ``workspace:NAME/path``, as paths on this job's site."""
    job = calling_job()
    site = job.site if job else bus.config.site

    async def one(value: str) -> str:
        return await bus.workspaces.resolve(value, site=site) if value.startswith("workspace:") else value

    inputs = {k: await one(v) for k, v in spec.inputs.items()}
    outputs = {k: await one(v) for k, v in spec.outputs.items()}
    return spec.model_copy(update={"inputs": inputs, "outputs": outputs})


_SLOT = re.compile("\ue000([^\ue000\ue001]{1,200})\ue001")


async def _fill_item(bus: Bus, spec: StepSpec, argv: list[str]) -> tuple[StepSpec, list[str]]:
    """A per-arrival run: put the arriving data (found by the id its trigger passed) into the slots.

    The values come from the bus's own record of the data, looked up by id, not from
    anything the job's command line carried.
    """
    data_id = os.environ.get(TRIGGER_DATA_ENV)
    if not data_id:
        raise PipelineError(f"{spec.step} runs per arriving data, but {TRIGGER_DATA_ENV} is not set")
    record = await bus.data(data_id)
    values: dict[str, str] = {
        "item": record.location, "item.location": record.location, "item.site": record.site,
        "item.data_id": record.data_id,
    }  # fmt: skip
    values.update({f"item.meta.{k}": _text(v) for k, v in record.metadata.items()})

    def fill(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m[1] not in values:
                raise PipelineError(f"{spec.step}: the data that arrived ({data_id}) has no {m[1]}")
            return values[m[1]]

        return _SLOT.sub(one, text)

    for key, value in list(os.environ.items()):
        if "\ue000" in value:
            os.environ[key] = fill(value)  # the command's environment, inherited below
    inputs = {k: fill(v) for k, v in spec.inputs.items()}
    outputs = {k: fill(v) for k, v in spec.outputs.items()}
    return spec.model_copy(update={"inputs": inputs, "outputs": outputs, "label": data_id}), [fill(a) for a in argv]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, str | int | float) else json.dumps(value)


async def run_step(bus: Bus, spec: StepSpec, argv: list[str]) -> int:
    """Run one step's run as described in the module docstring; returns the exit code."""
    cwd = Path.cwd()
    if spec.per_arrival:
        spec, argv = await _fill_item(bus, spec, argv)
    spec = await _resolved(bus, spec)
    key = await asyncio.to_thread(run_key, spec, argv, cwd)
    recorded = await _recorded(bus, spec, key, cwd)
    if recorded is not None:
        print(f"lwfm-bus: {spec.step}: outputs already recorded for the same inputs; not run again", file=sys.stderr)
        job = calling_job()
        if job is not None:  # so whoever follows the run can say "up to date" rather than "ran"
            info = status_event(job, JobState.INFO, UP_TO_DATE)
            await bus.publish(make_event(info, source=f"/sites/{job.site}/step-exec"))
        code, done = int(recorded.get("lwfm_exit", 0)), recorded.get("lwfm_loop") == "done"
    else:
        try:
            code, output = await _run_command(argv, cwd)
        except _NotStarted as failed:
            return failed.code
        looping = spec.until is not None
        tolerated = looping and spec.until is not None and spec.until.kind == "exit_code"
        if code != 0 and not tolerated:
            return code
        done = await _verdict(bus, spec, code, output, cwd) if looping else True
        for name, rel in spec.outputs.items():
            path = cwd / rel
            if not path.exists():
                print(f"lwfm-bus: {spec.step}: declared output {name!r} ({rel}) was not produced", file=sys.stderr)
                return 1
            meta: dict[str, Any] = {
                "lwfm_pipeline": spec.pipeline, "lwfm_step": spec.step, "lwfm_key": key, "lwfm_output": name,
                "lwfm_exit": code, "lwfm_loop": "done" if done else "again",
            }  # fmt: skip
            if path.is_dir():
                meta["lwfm_tree"] = await asyncio.to_thread(_digest_path, path)
            await bus.notate(path, meta)
    if spec.until is None:
        return code
    iteration = spec.iteration or 0
    if not done and spec.max_iterations is not None and iteration + 1 >= spec.max_iterations:
        print(
            f"lwfm-bus: {spec.step}: the loop's condition did not hold after {spec.max_iterations} iterations",
            file=sys.stderr,
        )
        return EXHAUSTED
    marker = {"lwfm_unit": spec.unit, "lwfm_iter": iteration, "lwfm_loop": "done" if done else "again"}
    await bus.notate(f"/.lwfm/loops/{spec.run}/{spec.unit}/{iteration}", marker)
    return 0 if spec.until.kind == "exit_code" else code
