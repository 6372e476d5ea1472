"""Where metrics are served, and the rule for where they may listen (the dashboard's rule).

Beyond loopback only with a token: the metrics name sites and consumers, and count a
deployment's work.  Prometheus presents the token as ``Authorization: Bearer <token>``
(``authorization: {credentials: ...}`` in a scrape config).  On a cluster, a loopback
endpoint is reached through a Prometheus agent on the same host, or ``ssh -L``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._config import refuse_open_listen

__all__ = ["MetricsSettings", "check_metrics_listen"]


@dataclass(frozen=True)
class MetricsSettings:
    """Where to listen (``port`` 0: any free port) and the bearer token (None: none)."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None

    def __repr__(self) -> str:  # the token never reaches a log line
        token = "***" if self.token else None
        return f"MetricsSettings(host={self.host!r}, port={self.port}, token={token})"


def check_metrics_listen(settings: MetricsSettings) -> None:
    """Refuse (:class:`ConfigError`) a listen address beyond loopback without a token."""
    refuse_open_listen(settings.host, settings.token, "metrics", "give --metrics-token, or keep the default 127.0.0.1")
