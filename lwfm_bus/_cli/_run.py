"""``lwfm-bus run FILE``: compile a pipeline into jobs and triggers on the bus and follow it.

A pipeline with a top-level ``schedule:`` is not run: its schedule is registered (a
schedule trigger whose job, at each tick, is ``lwfm-bus run FILE --now`` with the same
``--set``: a new run per tick) and the command returns.  ``--now`` runs it once, now.

Exit code 0 when every step completed, 1 when a step failed (each failure is listed,
and its progress line shows the job and the end of its stderr), 2 when the file is
refused (every problem as ``FILE:LINE:COL: field: message``: a step on a site this home
does not configure is one) or the bus refuses the run (one line).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import logging
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from .._bus._connect import connection_lost_for, hide_outages
from .._client import Bus, connect
from .._config import BusConfig
from .._errors import BusClosedError, LwfmBusError, PipelineError, PublishError
from .._jobs import JobDefn
from .._pipeline import Pipeline
from .._pipeline._run import RunReport, plural, run_pipeline
from .._subjects import check_token
from .._triggers import Downstream, ScheduleTrigger
from ._print import add_set_option, load_or_report, pipeline_credential_warnings, print_issues, shown

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a pipeline file: its steps become jobs and triggers on the bus")
    p.add_argument("file", type=Path, metavar="FILE", help="the pipeline (.yaml)")
    add_set_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    p.add_argument(
        "--resume", metavar="WORKFLOW", type=_token,
        help="continue an earlier run (its workflow id, printed at its start) instead of starting a new one",
    )  # fmt: skip
    p.add_argument(
        "--now", action="store_true",
        help="run once, now, even if the pipeline has a schedule (what each of its ticks runs)",
    )  # fmt: skip
    p.set_defaults(func=run)


def _token(text: str) -> str:
    try:
        return check_token(text, "workflow id")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    if args.resume and not args.overrides:  # a resume without --set applies the run's own again
        args.overrides = await _stored_overrides(config, args.resume)
    pipeline = load_or_report(args.file, args.overrides, config)
    if pipeline is None:
        return 2
    for warning in pipeline_credential_warnings(args.file, pipeline):
        print(warning, file=sys.stderr)
    if pipeline.schedule is not None and not getattr(args, "now", False) and not args.resume:
        return await _register_schedule(args, config, pipeline)

    def echo(line: str) -> None:
        if not args.quiet:
            print(shown(line), flush=True)  # a progress line names jobs and quotes their reasons

    for handler in logging.getLogger().handlers:  # a lost bus is said once, at the end, with how to resume
        hide_outages(handler)
    # This process judges triggers too while it runs (one more engine replica: never a
    # double firing), so a pipeline runs even where no 'lwfm-bus up' is running.
    engine = "on" if config.engine == "auto" else config.engine
    refused: list[LwfmBusError] = []
    started: list[str] = []  # the run's workflow id, once it is defined
    try:
        try:
            async with connect(
                config.model_copy(update={"engine": engine}), name=f"lwfm-bus run {pipeline.name}"
            ) as bus:
                report = await _unless_lost(
                    bus,
                    functools.partial(
                        run_pipeline,
                        bus,
                        pipeline,
                        echo,
                        resume=args.resume,
                        started=started.append,
                        overrides=args.overrides,
                    ),
                )
        except* LwfmBusError as group:  # a glob that matches nothing, a query that finds nothing, a site...
            refused += [e for e in _leaves(group) if isinstance(e, LwfmBusError)]
        except* (ConnectionError, TimeoutError) as group:  # the server went away: closing the connection failed
            gone = _leaves(group)[0]
            refused += [_lost(gone) or BusClosedError(f"the connection failed: {gone!r}")]
    except (asyncio.CancelledError, KeyboardInterrupt):  # Ctrl-C (or SIGTERM): say how to go on, then end as before
        if started:
            _print_next_steps(args, started[0])
        raise
    lost = [e for e in refused if isinstance(e, (PublishError, BusClosedError))]
    if lost and started:  # the bus went away under the run: what ran so far stays; say how to go on
        resume = _resume_command(args, started[0])
        print(f"lwfm-bus: error: lost the bus ({shown(lost[0])}); resume with '{shown(resume)}'", file=sys.stderr)
        return 2
    if refused:
        for err in refused:
            if isinstance(err, PipelineError):
                print_issues(err)
            else:  # raised inside the engine's task group: one line, as for any other command
                print(f"lwfm-bus: error: {shown(err)}", file=sys.stderr)
        return 2
    width = max((len(shown(s)) for s in report.steps), default=4)
    skipped = f", {plural(report.up_to_date, 'run')} up to date (not run again)" if report.up_to_date else ""
    outcome = "complete" if report.ok else "FAILED"
    print(f"\n{shown(pipeline.name)} ({shown(report.workflow_id)}): {outcome}{skipped}")
    for step, (done, total) in report.steps.items():
        print(f"  {shown(step):<{width}}  {done}/{total} complete")
    for failure in report.failures:
        print(f"  failed: {shown(failure)}", file=sys.stderr)
    return 0 if report.ok else 1


async def _register_schedule(args: argparse.Namespace, config: BusConfig, pipeline: Pipeline) -> int:
    """Register the pipeline's schedule: each tick's job runs this file again with ``--now``, as a new run.

    The job runs on this machine's ``local`` site, in the file's directory, with this
    interpreter; it is a client of the bus (its environment says where the bus is), so the
    engine and the agents already running start the run's steps.
    """
    assert pipeline.schedule is not None
    path = args.file.resolve()
    argv = [sys.executable, "-m", "lwfm_bus", "run", str(path), "--now", "-q"]
    for text in args.overrides:
        argv += ["--set", text]
    job = JobDefn(argv=tuple(argv), cwd=str(path.parent), name=f"scheduled run of {pipeline.name}")
    # Running the file again must not schedule it twice: the same file, settings and schedule
    # are the same trigger; a changed schedule (or --set) replaces the file's earlier one.
    spec = pipeline.schedule.model_dump_json()
    trigger_id = "sched-" + hashlib.sha256("\x1f".join([str(path), *args.overrides, spec]).encode()).hexdigest()[:24]
    trigger = ScheduleTrigger.model_validate(
        {
            **pipeline.schedule.model_dump(), "trigger_id": trigger_id, "name": f"schedule of {pipeline.name}",
            "downstream": Downstream(job=job),
        }
    )  # fmt: skip
    async with connect(config, name=f"lwfm-bus run {pipeline.name}") as bus:
        active = [
            t for t in await bus.triggers(state="active")
            if t.kind == "schedule" and isinstance(t.definition.downstream.job.argv, tuple)
            and str(path) in t.definition.downstream.job.argv[3:5]
        ]  # fmt: skip
        if any(t.trigger_id == trigger_id for t in active):
            print(f"{shown(pipeline.name)}: already scheduled as {trigger_id}, unchanged ('lwfm-bus trigger rm "
                  f"{trigger_id}' withdraws it)")  # fmt: skip
            return 0
        await bus.add_trigger(trigger)
        for old in active:
            await bus.cancel_trigger(old.trigger_id, reason=f"replaced by {trigger_id}")
            print(f"{shown(pipeline.name)}: schedule {old.trigger_id} withdrawn (replaced)")
    print(
        f"{shown(pipeline.name)}: schedule {trigger.trigger_id} registered: each tick starts a new run "
        f"('lwfm-bus trigger rm {trigger.trigger_id}' withdraws it)"
    )
    return 0


async def _stored_overrides(config: BusConfig, workflow_id: str) -> list[str]:
    """The ``--set`` texts run ``workflow_id`` was started with (its workflow's "overrides" property)."""
    async with connect(config.model_copy(update={"engine": "off", "agents": ()}), name="lwfm-bus run") as bus:
        record = await bus.workflow(workflow_id)
    stored = record.properties.get("overrides") if record is not None else None
    return [str(text) for text in stored] if isinstance(stored, list) else []


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions of ``group`` and of the groups nested in it (task groups within task groups)."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


_LOST_AFTER_S = 10.0  # a bus restarted within this is survived; longer, and run says how to resume


async def _unless_lost(bus: Bus, follow: Callable[[], Awaitable[RunReport]]) -> RunReport:
    """``follow()``, unless the connection to the bus is down for :data:`_LOST_AFTER_S` first.

    A run following its events through an outage would otherwise wait for ever, silently
    (nats-py reconnects without end): it ends instead with the one "lost the bus" line.
    """
    report: list[RunReport] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            report.append(await follow())
            tg.cancel_scope.cancel()

        async def watch() -> None:
            await connection_lost_for(bus.nats, _LOST_AFTER_S)
            raise BusClosedError(f"no connection to the bus for {_LOST_AFTER_S:g}s")

        tg.start_soon(run)
        tg.start_soon(watch)
    return report[0]


def _print_next_steps(args: argparse.Namespace, workflow_id: str) -> None:
    """After an interruption: the commands that resume the run, or cancel what of it still runs."""
    resume = _resume_command(args, workflow_id)
    cancel = shlex.join(["lwfm-bus", "workflow", "cancel", workflow_id])
    print(f"\ninterrupted: the jobs and triggers of run {shown(workflow_id)} stay on the bus", file=sys.stderr)
    print(f"  resume it with: {shown(resume)}", file=sys.stderr)
    print(f"  or cancel it with: {shown(cancel)}", file=sys.stderr)


def _resume_command(args: argparse.Namespace, workflow_id: str) -> str:
    """``lwfm-bus run FILE [--set ...] --resume W``: this command again, continuing run ``W``."""
    sets = [word for value in args.overrides for word in ("--set", value)]
    return shlex.join(["lwfm-bus", "run", str(args.file), *sets, "--resume", workflow_id])


def _lost(error: BaseException) -> LwfmBusError | None:
    """The bus error the run ended with, when closing the connection then failed too (in ``__context__``)."""
    seen: BaseException | None = error.__context__
    while seen is not None:
        if isinstance(seen, BaseExceptionGroup):
            found = seen.subgroup(LwfmBusError)
            if found is not None:
                return next((e for e in found.exceptions if isinstance(e, LwfmBusError)), None)
        elif isinstance(seen, LwfmBusError):
            return seen
        seen = seen.__context__
    return None
