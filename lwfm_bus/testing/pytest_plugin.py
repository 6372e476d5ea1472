"""pytest fixtures: ``nats_server`` (a fresh real server per test), ``bus_config``, ``bus``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .. import _client
from .._bus._server import EmbeddedServer
from .._config import BusConfig
from . import bus_config_for, hold_connection, start_test_server


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """A real nats-server with JetStream on a free loopback port, its store under ``tmp_path``."""
    async with start_test_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def bus_config(nats_server: EmbeddedServer, tmp_path: Path) -> BusConfig:
    return bus_config_for(nats_server, tmp_path / "home")


@pytest_asyncio.fixture
async def bus(bus_config: BusConfig) -> AsyncIterator[_client.Bus]:
    """A connected bus that also runs the ``local`` site's agent, as ``lwfm-bus up`` would."""
    async with hold_connection(bus_config) as connected:
        yield connected
