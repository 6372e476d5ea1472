"""Helpers for testing code that uses lwfm-bus: a real nats-server per test, no mocks.

The pytest fixtures live in :mod:`lwfm_bus.testing.pytest_plugin`; enable them with
``pytest_plugins = ["lwfm_bus.testing.pytest_plugin"]`` in a ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

from .._config import BusConfig, EmbeddedServerConfig
from .._server import EmbeddedServer

__all__ = ["bus_config_for", "start_test_server"]


def start_test_server(root: Path) -> EmbeddedServer:
    """An embedded server on a free loopback port with its store under ``root``.

    Use it with ``async with``; it is ready when the block starts.
    """
    return EmbeddedServer(EmbeddedServerConfig(port=0), root / "jetstream", name="lwfm-test")


def bus_config_for(server: EmbeddedServer, home: Path, **overrides: object) -> BusConfig:
    """A config that reaches ``server`` as an external deployment, with state under ``home``."""
    return BusConfig.model_validate({"servers": (server.url,), "home": home, **overrides})
