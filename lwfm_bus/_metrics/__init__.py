"""Prometheus metrics, ``/healthz`` and ``/readyz`` for long-running processes (``up``, ``engine``, ``agent``).

The ``metrics`` extra (prometheus-client, Starlette, uvicorn).  Nothing in the engine or the
agents knows of it: they keep plain counters (:class:`~lwfm_bus.EngineStats`, the bus's
stats, the nats connection's), and a collector reads them, with the consumers' state from
the server, when Prometheus scrapes.  So a process that serves no metrics pays nothing.

``_observed`` (what this process runs, and whether it is ready: no optional import),
``_collector`` (the metric families), ``_serve`` (the HTTP server inside an anyio task group).
"""

from __future__ import annotations

from ._observed import Observed
from ._settings import MetricsSettings, check_metrics_listen

__all__ = ["MetricsSettings", "Observed", "check_metrics_listen"]
