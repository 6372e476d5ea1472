"""Argument parsing and the run loop shared by every subcommand.

There is one module per top-level command word (``_submit`` for ``lwfm-bus submit``,
``_step_exec`` for ``step-exec``...) and ``_print`` for what several of them share.
Each command module exposes ``register(subparsers)`` and sets ``func`` on its
parser to an ``async def (args, config) -> int``.  Errors we raise on purpose become
one clear line on stderr and exit code 2; Ctrl-C and SIGTERM stop cleanly (130/143).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from .._config import BusConfig, load_config
from .._errors import LwfmBusError, PipelineError, ServerStartError
from . import (
    _agent,
    _cancel,
    _data,
    _dead_letters,
    _demo,
    _down,
    _emit,
    _engine,
    _env,
    _events,
    _export,
    _federation,
    _find,
    _get,
    _graph,
    _import,
    _logs,
    _notate,
    _put,
    _run,
    _schemas,
    _secret,
    _server,
    _status,
    _step_exec,
    _submit,
    _trigger,
    _ui,
    _up,
    _validate,
    _wait,
    _workflow,
    _workspace,
)
from ._logfmt import setup_logging
from ._print import shown

Command = Callable[[argparse.Namespace, BusConfig], Awaitable[int]]

_MODULES = (
    _up,
    _down,
    _agent,
    _server,
    _demo,
    _submit,
    _status,
    _wait,
    _cancel,
    _logs,
    _engine,
    _trigger,
    _notate,
    _find,
    _put,
    _get,
    _data,
    _workspace,
    _secret,
    _workflow,
    _export,
    _import,
    _validate,
    _run,
    _step_exec,
    _graph,
    _federation,
    _env,
    _emit,
    _events,
    _dead_letters,
    _schemas,
    _ui,
)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a mistyped choice (``lwfm-bus sumbit``) is one line that suggests the nearest.

    Subcommand parsers are made of the same class, so ``workflow shwo`` and ``--format svh`` say it too.
    """

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or not isinstance(value, str) or value in choices:
            super()._check_value(action, value)
            return
        names = [str(choice) for choice in choices]
        close = difflib.get_close_matches(value, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "choose from " + ", ".join(names)
        option = f"argument {'/'.join(action.option_strings)}: " if action.option_strings else ""
        self.exit(2, f"{self.prog}: error: {option}invalid choice: '{shown(value)}' ({hint})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lwfm-bus",
        description="Lightweight event-driven workflow manager on NATS JetStream.",
    )
    parser.add_argument("--home", type=Path, help="state directory (default: per-user; env LWFM_BUS_HOME)")
    parser.add_argument("--url", help="NATS server URL(s), comma-separated (default: embedded; env LWFM_BUS_URL)")
    parser.add_argument("--site", help="site this process speaks for (default: local; env LWFM_BUS_SITE)")
    parser.add_argument("--federation", type=Path, help="federation file (env LWFM_BUS_FEDERATION)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (default) or one JSON object per line (time, level, logger, message)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _MODULES:
        module.register(sub)
    return parser


def _config(args: argparse.Namespace) -> BusConfig:
    overrides: dict[str, object] = {"home": args.home, "site": args.site, "federation_file": args.federation}
    if args.url:
        overrides["servers"] = tuple(u.strip() for u in args.url.split(",") if u.strip())
    return load_config(overrides=overrides)


async def _run_command(func: Command, args: argparse.Namespace, config: BusConfig) -> int:
    # SIGTERM ends the command the way Ctrl-C does: by cancelling it, so every
    # ``async with`` below unwinds and child servers are stopped.
    task = asyncio.current_task()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    if sys.platform != "win32":
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await func(args, config)
    except asyncio.CancelledError:
        if terminated:
            return 143
        raise  # Ctrl-C: asyncio.run turns this into KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    try:
        config = _config(args)
        return asyncio.run(_run_command(args.func, args, config))
    except KeyboardInterrupt:
        return 130
    except LwfmBusError as exc:
        print(f"lwfm-bus: error: {_message(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _reader_left()
    except BaseExceptionGroup as group:
        if group.subgroup(BrokenPipeError) is None or group.subgroup(lambda e: not isinstance(e, BrokenPipeError)):
            raise
        return _reader_left()


def _message(exc: LwfmBusError) -> str:
    """The error's message with what it quotes escaped (:func:`._print.shown`), its deliberate lines kept.

    Two errors are several lines on purpose: a refused pipeline (one line per issue) and a
    server that failed to start (the server's own log lines after the headline).
    """
    text = str(exc)
    if isinstance(exc, PipelineError) and text == "\n".join(str(issue) for issue in exc.issues):
        return "\n".join(shown(issue) for issue in exc.issues)
    if isinstance(exc, ServerStartError) and exc.log:
        head = text.removesuffix("\n" + "\n".join(exc.log))
        return "\n".join([shown(head), *(shown(line) for line in exc.log)])
    return shown(text)


def _reader_left() -> int:
    """Whoever read our output stopped (``| head``): end quietly, as a pipeline expects.

    Standard output is pointed at /dev/null first, or Python's own flush at exit would
    fail on the closed pipe once more and print a traceback after all.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0
