"""A real nats-server per test, and a bus config that reaches it: no mocks.

The pytest fixtures live in :mod:`lwfm_bus.testing.pytest_plugin`; enable them with
``pytest_plugins = ["lwfm_bus.testing.pytest_plugin"]`` in a ``conftest.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .._bus._server import EmbeddedServer
from .._client import Bus, connect
from .._config import BusConfig, EmbeddedServerConfig

__all__ = ["bus_config_for", "hold_connection", "start_test_server"]


def start_test_server(root: Path) -> EmbeddedServer:
    """An embedded server on a free loopback port with its store under ``root``.

    Use it with ``async with``; it is ready when the block starts.
    """
    return EmbeddedServer(EmbeddedServerConfig(port=0), root / "jetstream", name="lwfm-test")


def bus_config_for(server: EmbeddedServer, home: Path, **overrides: object) -> BusConfig:
    """A config that reaches ``server`` as an external deployment, with state under ``home``.

    Processes connected with it run the ``local`` site's agent (``agents``), as if
    ``lwfm-bus up`` were running: submitted jobs run.  Override ``agents=()`` for a
    client that runs nothing.
    """
    return BusConfig.model_validate({"servers": (server.url,), "home": home, "agents": ("local",), **overrides})


class _Held:
    """``connect()`` kept open by a task of its own.

    pytest-asyncio sets a fixture up and tears it down in different tasks, and a bus
    that runs agents holds a task group, which must be left by the task that entered
    it: one task holds the whole ``async with``.
    """

    def __init__(self, config: BusConfig) -> None:
        self._config = config
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Bus:
        opened: asyncio.Future[Bus] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            async with connect(self._config) as connected:
                opened.set_result(connected)
                await self._stop.wait()

        self._task = asyncio.get_running_loop().create_task(run())
        waiting: list[asyncio.Future[Any]] = [self._task, opened]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not opened.done():
            await self._task  # it failed: raise why
            raise RuntimeError("connect() ended before it was ready")  # pragma: no cover
        return opened.result()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def hold_connection(config: BusConfig) -> _Held:
    """An ``async with`` that connects in a task of its own (see :class:`_Held`)."""
    return _Held(config)
