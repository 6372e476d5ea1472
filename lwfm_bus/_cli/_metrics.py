"""``--metrics-port`` and friends for the long-running commands (``up``, ``engine``, ``agent``).

Metrics are served only when asked (``--metrics-port``), on loopback unless a token is
given, from the ``metrics`` extra: without it, one line says how to install it.  The
server starts before the command connects, so ``/healthz`` answers at once and
``/readyz`` says 503 until the command's parts are running.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import anyio

from .._errors import ConfigError
from ._print import missing_extra, shown

if TYPE_CHECKING:
    from .._bus._eventbus import EventBus
    from .._engine._replica import Engine
    from .._metrics import MetricsSettings, Observed
    from .._sites._agent import SiteAgent

__all__ = ["add_metrics_options", "announce", "metrics_served", "running"]

log = logging.getLogger("lwfm_bus.cli")


def add_metrics_options(p: argparse.ArgumentParser) -> None:
    """``--metrics-port``, ``--metrics-host``, ``--metrics-token``."""
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve Prometheus metrics, /healthz and /readyz on this port (0: any free port; default: off)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="H",
        help="listen address for metrics (default 127.0.0.1; beyond loopback needs --metrics-token)",
    )
    p.add_argument(
        "--metrics-token", metavar="T", help="a bearer token Prometheus must present for /metrics (probes need none)"
    )


def announce(args: argparse.Namespace, message: str) -> None:
    """A long-running command's status line: text on stderr, or a log record when logs are JSON.

    With ``--log-format json`` every line of stderr must be one JSON object, so the
    line goes through logging (at INFO, on ``lwfm_bus.cli``, which is let through).
    """
    if getattr(args, "log_format", "text") == "json":
        log.info("%s", message)
    else:
        print(f"lwfm-bus: {shown(message)}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> MetricsSettings:
    try:
        from .._metrics import MetricsSettings, check_metrics_listen
        from .._metrics._serve import serve_metrics  # noqa: F401 - the extra's imports, checked now
    except ImportError as exc:
        raise missing_extra("metrics", "metrics need", exc) from None
    settings = MetricsSettings(host=args.metrics_host, port=args.metrics_port, token=args.metrics_token)
    check_metrics_listen(settings)
    return settings


@contextlib.asynccontextmanager
async def metrics_served(
    args: argparse.Namespace, *, wants_engine: bool = False, wants_agents: bool = False
) -> AsyncIterator[Observed | None]:
    """Serve metrics for the block when ``--metrics-port`` was given; yields what the server watches.

    A refusal (a host beyond loopback without a token) or a port in use is raised before
    the block runs, as one clear error.  None when metrics are off.
    """
    if getattr(args, "metrics_port", None) is None:
        yield None
        return
    settings = _settings(args)
    from .._metrics import Observed
    from .._metrics._serve import serve_metrics

    observed = Observed(wants_engine=wants_engine, wants_agents=wants_agents)
    try:
        async with anyio.create_task_group() as tg:
            try:
                url = await tg.start(serve_metrics, settings, observed)
            except OSError as exc:
                where = f"{settings.host}:{settings.port}"
                raise ConfigError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
            announce(args, f"metrics at {url}metrics (health: {url}healthz, {url}readyz)")
            try:
                yield observed
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (the command's own, or the server's) is said as itself: one line, exit 2.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


def running(
    observed: Observed | None, bus: EventBus, engine: Engine | None = None, agents: Sequence[SiteAgent] = ()
) -> contextlib.AbstractContextManager[None]:
    """While the block runs, metrics and ``/readyz`` watch these (nothing when metrics are off)."""
    return contextlib.nullcontext() if observed is None else observed.running(bus, engine, agents)
