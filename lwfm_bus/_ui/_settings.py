"""How the dashboard is served, and the rule for where it may listen.

The rule is the embedded server's: beyond loopback only with a secret.  A dashboard on a
network without a token shows every job, and with ``--allow-actions`` lets anyone who
reaches the port cancel them.  People on a cluster reach a loopback dashboard through
``ssh -L``, so loopback is the default and needs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._config import refuse_open_listen

__all__ = ["DEFAULT_PORT", "UiSettings", "check_listen"]

DEFAULT_PORT = 8765


@dataclass(frozen=True)
class UiSettings:
    """Where to listen, the access token (None: none), and whether POST actions are allowed.

    ``port`` 0 picks a free port (the URL :func:`~lwfm_bus._ui.serve_ui` reports has the real one).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    allow_actions: bool = False

    def __repr__(self) -> str:  # the token never reaches a log line
        token = "***" if self.token else None
        return f"UiSettings(host={self.host!r}, port={self.port}, token={token}, allow_actions={self.allow_actions})"


def check_listen(settings: UiSettings) -> None:
    """Refuse (:class:`ConfigError`) a listen address beyond loopback without a token."""
    refuse_open_listen(
        settings.host, settings.token, "the dashboard",
        "give --token, or keep the default 127.0.0.1 and open it through 'ssh -L'",
    )  # fmt: skip
