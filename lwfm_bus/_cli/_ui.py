"""``lwfm-bus ui``: serve the web dashboard until Ctrl-C; ``up --ui`` serves it alongside the bus.

The dashboard is the ``ui`` extra (Starlette, uvicorn): without it this command says how to
install it, in one line, and the rest of the command line works as before.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from .._client import Bus, connect
from .._config import BusConfig
from .._errors import ConfigError
from ._print import missing_extra, shown

if TYPE_CHECKING:
    from .._ui import UiSettings

__all__ = ["add_ui_options", "register", "serve_dashboard", "settings_from"]

DEFAULT_PORT = 8765  # also lwfm_bus._ui.DEFAULT_PORT; repeated so that --help needs no extra installed


def add_ui_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--port``, ``--host``, ``--token``, ``--allow-actions`` (``--ui-port``... with ``prefix='ui-'``)."""
    p.add_argument(
        f"--{prefix}port", type=int, default=DEFAULT_PORT, metavar="P", help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    p.add_argument(
        f"--{prefix}host",
        default="127.0.0.1",
        metavar="H",
        help="listen address (default 127.0.0.1; beyond loopback needs --token); from afar use 'ssh -L'",
    )
    p.add_argument(f"--{prefix}token", metavar="T", help="a secret every browser must present (in the printed URL)")
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help="let the page cancel jobs and workflows (default: read-only)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the web dashboard: every workflow live, its metro map coloured as it runs",
        description="Serve the web dashboard for this bus until Ctrl-C. It listens on 127.0.0.1 by default; "
        "from another machine, forward the port: ssh -L 8765:127.0.0.1:8765 HOST, then open "
        "http://127.0.0.1:8765/. Read-only unless --allow-actions.",
    )
    add_ui_options(p)
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace, prefix: str = "") -> UiSettings:
    """The dashboard's settings from the options of :func:`add_ui_options`; one clear error without the extra."""
    try:
        from .._ui import UiSettings, check_listen
    except ImportError as exc:
        raise missing_extra("ui", "the dashboard needs", exc) from None
    key = prefix.replace("-", "_")
    settings = UiSettings(
        host=getattr(args, f"{key}host"),
        port=getattr(args, f"{key}port"),
        token=getattr(args, f"{key}token"),
        allow_actions=args.allow_actions,
    )
    check_listen(settings)
    return settings


class _Announce(TaskStatus[str]):
    """Prints the URL once the dashboard listens, then tells the caller's task status (if any)."""

    def __init__(self, settings: UiSettings, then: TaskStatus[str]) -> None:
        self._settings = settings
        self._then = then
        self.listening = False

    def started(self, value: str | None = None) -> None:
        assert value is not None
        self.listening = True
        mode = "actions allowed" if self._settings.allow_actions else "read-only"
        url = value + (f"?token={self._settings.token}" if self._settings.token else "")
        print(f"lwfm-bus: dashboard at {shown(url)} ({mode}); Ctrl-C stops it", file=sys.stderr, flush=True)
        self._then.started(value)


async def serve_dashboard(
    bus: Bus, settings: UiSettings, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; prints the URL (with the token, for the person who chose it) once it listens.

    Called directly, not in a task group of its own, so that a refusal or a port in use reaches
    the command's error handling as itself (one line, exit 2), not inside an exception group.
    """
    from .._ui import serve_ui

    announce = _Announce(settings, task_status)
    try:
        await serve_ui(bus, settings, task_status=announce)
    except OSError as exc:
        if announce.listening:
            raise
        where = f"{settings.host}:{settings.port}"
        raise ConfigError(f"cannot serve the dashboard on {where}: {exc.strerror or exc}") from None


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    settings = settings_from(args)
    # It reads the index and asks agents to cancel: it runs no engine and no agent of its own.
    async with connect(config.model_copy(update={"engine": "off", "agents": ()}), name="lwfm-bus ui") as bus:
        await serve_dashboard(bus, settings)
    return 0
