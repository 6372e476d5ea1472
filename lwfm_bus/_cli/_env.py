"""``lwfm-bus env``: a step's isolated Python environment, prepared and entered on the site that runs it.

``env exec`` is job-side: it needs no bus connection and replaces itself with the step's command, so the
site sees the command's pid and exit code.  Exit codes of its own: 2 for bad arguments (an invalid
requirement or installer), 3 when the environment cannot be built (the installer's output tail, then one
headline, on stderr), 126/127 when the command cannot be executed or is not found, as a shell would.

Which installer builds a new environment (``auto``: uv when installed, else pip; see ``lwfm_bus._pyenv``) is
read here, at the edge: ``--installer``, else ``LWFM_BUS_ENV_INSTALLER``, which a pipeline step can set in its
``env`` since its ``env exec`` line is written for it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .._config import BusConfig
from .._errors import ConfigError, EnvBuildError
from .._pyenv import TOOLS, Installer, list_envs, remove_all, remove_env, run_in_env, terminate_on_signal
from ._print import shown

__all__ = ["BUILD_FAILED", "register"]

BUILD_FAILED = 3
INSTALLER_ENV = "LWFM_BUS_ENV_INSTALLER"


def register(sub: Any) -> None:
    env = sub.add_parser("env", help="isolated Python environments for steps, one per requirement set")
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")

    x = env_sub.add_parser(
        "exec",
        help="run a command in the environment for these requirements (built once, then reused)",
        description="Example: lwfm-bus env exec -r 'numpy>=1.24,<3' -r requests -- python step.py",
    )
    x.add_argument(
        "-r", "--requirement", dest="requirements", action="append", default=[], metavar="REQ", help="repeatable"
    )
    x.add_argument("--index-url", help="pip --index-url")
    x.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL", help="pip --find-links")
    x.add_argument("--no-index", action="store_true", help="pip --no-index: only --find-links")
    x.add_argument(
        "--installer",
        choices=("auto", "uv", "pip"),
        help="what builds a new environment (default: env LWFM_BUS_ENV_INSTALLER, else auto: uv if installed)",
    )
    _root_arg(x)
    x.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    x.set_defaults(func=exec_)

    ls = env_sub.add_parser("ls", help="list environments: key, created, size, what built it (uv or pip), requirements")
    _root_arg(ls)
    ls.set_defaults(func=ls_)

    rm = env_sub.add_parser("rm", help="delete environments (not those in use or being built)")
    which = rm.add_mutually_exclusive_group(required=True)
    which.add_argument("key", nargs="?", help="the key shown by `env ls`")
    which.add_argument("--all", action="store_true", help="every environment under the root (not the uv cache)")
    _root_arg(rm)
    rm.set_defaults(func=rm_)


def _root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, help="where environments live (default: <home>/envs)")


def _root(args: argparse.Namespace, config: BusConfig) -> Path:
    root: Path = args.root or config.home / "envs"
    return root


async def exec_(args: argparse.Namespace, config: BusConfig) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("env exec: give the command after --, e.g. env exec -r REQ -- python step.py")
    # A build can take minutes and the event loop is not running meanwhile: let SIGTERM (a cancelled job)
    # raise at once, so pip is killed and the half-built environment removed before we exit.
    if sys.platform != "win32":
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, terminate_on_signal)
    logger = logging.getLogger("lwfm_bus._pyenv")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # a build is worth one line in the job's log
    tool = args.installer or os.environ.get(INSTALLER_ENV) or "auto"
    if tool not in TOOLS:
        raise ConfigError(f"{INSTALLER_ENV}={tool!r}: choose one of {', '.join(TOOLS)}")
    installer = Installer(args.index_url, tuple(args.find_links), args.no_index, tool)
    try:
        run_in_env(command, args.requirements, _root(args, config), installer)
    except EnvBuildError as exc:
        for line in exc.output:
            print(f"  {shown(line)}", file=sys.stderr)
        print(f"lwfm-bus env: {shown(exc)}", file=sys.stderr)
        return BUILD_FAILED
    except FileNotFoundError:
        print(f"lwfm-bus env: {shown(command[0])}: command not found in the environment or on PATH", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"lwfm-bus env: {shown(command[0])}: {shown(exc.strerror or exc)}", file=sys.stderr)
        return 126


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


async def ls_(args: argparse.Namespace, config: BusConfig) -> int:
    for record in list_envs(_root(args, config)):
        created = record.created if record.ready else "(incomplete)"
        reqs = " ".join(shown(r) for r in record.requirements) or "-"
        tool = shown(record.tool or "-")
        print(f"{shown(record.key)}  {shown(created)}  {_human(record.size):>10}  {tool:<3}  {reqs}")
    return 0


async def rm_(args: argparse.Namespace, config: BusConfig) -> int:
    root = _root(args, config)
    outcomes = remove_all(root) if args.all else {args.key: remove_env(root, args.key)}
    status = 0
    for key, outcome in outcomes.items():
        if outcome == "removed":
            print(f"removed {shown(key)}")
        elif outcome == "busy":
            print(f"lwfm-bus env: {shown(key)} is in use or being built; not removed", file=sys.stderr)
            status = 1
        elif not args.all:
            print(f"lwfm-bus env: no environment {shown(key)} under {shown(root)}", file=sys.stderr)
            status = 1
    return status
