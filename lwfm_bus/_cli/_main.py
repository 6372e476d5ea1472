"""Argument parsing and the run loop shared by every subcommand.

There is one module per top-level command word (``_submit`` for ``lwfm-bus submit``,
``_step_exec`` for ``step-exec``...) and ``_print`` for what several of them share.
Each command module exposes ``register(subparsers)`` and sets ``func`` on its
parser to an ``async def (args, config) -> int``.  Errors we raise on purpose become
one clear line on stderr and exit code 2; Ctrl-C and SIGTERM stop cleanly (130/143).

A command's module is imported only when that command runs (or when ``lwfm-bus --help``
lists them all): ``lwfm-bus emit`` and ``step-exec``, run by every job, would otherwise
pay for every other command's imports -- the bundle code, the dashboard, the pipeline
loader -- about 0.3 s each time (issue #21).  So this module imports nothing heavy
either: the configuration is read, and asyncio imported, once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import LwfmBusError, PipelineError, ServerStartError
from ._logfmt import setup_logging
from ._shown import shown

if TYPE_CHECKING:
    from .._config import BusConfig

    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction

Command = Callable[[argparse.Namespace, "BusConfig"], Awaitable[int]]

# Command word -> the module (in this package) whose ``register`` adds it; ``--help``
# lists them in this order.  Adding a command is one line here.
COMMANDS: dict[str, str] = {
    "up": "_up",
    "down": "_down",
    "agent": "_agent",
    "server": "_server",
    "demo": "_demo",
    "submit": "_submit",
    "status": "_status",
    "wait": "_wait",
    "cancel": "_cancel",
    "logs": "_logs",
    "engine": "_engine",
    "trigger": "_trigger",
    "notate": "_notate",
    "find": "_find",
    "put": "_put",
    "get": "_get",
    "data": "_data",
    "workspace": "_workspace",
    "secret": "_secret",
    "workflow": "_workflow",
    "export": "_export",
    "import": "_import",
    "validate": "_validate",
    "run": "_run",
    "step-exec": "_step_exec",
    "notify-send": "_notify_send",
    "graph": "_graph",
    "federation": "_federation",
    "cluster": "_cluster",
    "env": "_env",
    "emit": "_emit",
    "events": "_events",
    "dead-letters": "_dead_letters",
    "schemas": "_schemas",
    "ui": "_ui",
}


class _Commands(_SubParsers):
    """argparse's subcommands, each registered by its module only when it is needed.

    Every word of :data:`COMMANDS` is a valid choice from the start (so a typo is still
    judged against all of them); the module of the chosen word is imported and
    registered as the word is parsed, and all of them when the help lists them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse only tests membership in, and lists, the choices: every word, loaded or not.
        self.choices = tuple(COMMANDS)  # type: ignore[assignment]

    def load(self, word: str) -> None:
        """Import ``word``'s module and let it add its parser, once."""
        if word not in self._name_parser_map:
            importlib.import_module(f"{__package__}.{COMMANDS[word]}").register(self)
            if word not in self._name_parser_map:
                raise RuntimeError(f"{COMMANDS[word]}.register() did not add the command {word!r}")

    def _get_subactions(self) -> list[argparse.Action]:
        for word in COMMANDS:
            self.load(word)
        order = {word: i for i, word in enumerate(COMMANDS)}
        return sorted(self._choices_actions, key=lambda action: order.get(action.dest, len(order)))

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list) and values  # nargs=PARSER: the word, then its arguments
        if values[0] in COMMANDS:  # anything else was refused by _check_value already
            self.load(values[0])
        super().__call__(parser, namespace, values, option_string)


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
    parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands)
    return parser


def _config(args: argparse.Namespace) -> BusConfig:
    from .._config import load_config  # pydantic: only once the arguments are good

    overrides: dict[str, object] = {"home": args.home, "site": args.site, "federation_file": args.federation}
    if args.url:
        overrides["servers"] = tuple(u.strip() for u in args.url.split(",") if u.strip())
    return load_config(overrides=overrides)


async def _run_command(func: Command, args: argparse.Namespace, config: BusConfig) -> int:
    import asyncio  # already imported by whoever called: asyncio.run

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
    import asyncio  # not before the arguments are good: ``--help`` and a typo need none of it

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
    """The error's message with what it quotes escaped (:func:`._shown.shown`), its deliberate lines kept.

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
