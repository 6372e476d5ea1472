"""``/metrics``, ``/healthz`` and ``/readyz`` over uvicorn, inside the caller's anyio task group.

``await tg.start(serve_metrics, settings, observed)`` returns the base URL once the socket
listens (bound here, before uvicorn starts: a scraper that connects at once waits in the
backlog).  Cancelling the task stops it.  uvicorn's signal handling is off: signals
belong to the command that embeds the server (:mod:`lwfm_bus._http`, shared with the
dashboard).

``/healthz`` is 200 while the process serves at all; ``/readyz`` 200 or 503 with the
checks as JSON.  Neither says more than that, so a token guards ``/metrics`` only and
probes need no secret.
"""

from __future__ import annotations

import hmac
import logging

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .._http import serve_asgi
from ._collector import LwfmCollector, ServerState
from ._observed import Observed
from ._settings import MetricsSettings, check_metrics_listen

__all__ = ["build_metrics_app", "serve_metrics"]

log = logging.getLogger("lwfm_bus.metrics")


def build_metrics_app(observed: Observed, settings: MetricsSettings) -> Starlette:
    """The three endpoints; a registry of this process's own (no module-level state)."""
    collector = LwfmCollector(observed)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def metrics(request: Request) -> Response:
        if settings.token and not _bearer_ok(request, settings.token):
            return PlainTextResponse("a bearer token is needed\n", 401, headers={"WWW-Authenticate": "Bearer"})
        collector.state = await ServerState.fetch(observed)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        checks = observed.checks()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)],
    )


def _bearer_ok(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


async def serve_metrics(
    settings: MetricsSettings, observed: Observed, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status.started(url)`` once the socket listens.

    Raises :class:`~lwfm_bus.ConfigError` for a host beyond loopback without a token, and
    :class:`OSError` when the address cannot be bound.
    """
    check_metrics_listen(settings)
    app = build_metrics_app(observed, settings)
    await serve_asgi(app, settings.host, settings.port, name="metrics server", task_status=task_status)
