"""Helpers for testing code that uses lwfm-bus: a real nats-server per test, no mocks.

The pytest fixtures live in :mod:`lwfm_bus.testing.pytest_plugin`; enable them with
``pytest_plugins = ["lwfm_bus.testing.pytest_plugin"]`` in a ``conftest.py``.
:class:`NoopSite` is a site that runs nothing (every job completes as it is
submitted), served by a real agent with :func:`serve_noop_site`.
"""

from __future__ import annotations

from ._noop import NoopSite, serve_noop_site
from ._servers import bus_config_for, hold_connection, start_test_server

__all__ = ["NoopSite", "bus_config_for", "hold_connection", "serve_noop_site", "start_test_server"]
