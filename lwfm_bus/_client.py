"""``connect()``: the one entry point of the Python API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ._bus import EventBus
from ._config import BusConfig, load_config
from ._connect import open_event_bus

__all__ = ["Bus", "connect"]


class Bus(EventBus):
    """A connection to an lwfm bus: typed events now, jobs and triggers as they land."""


@contextlib.asynccontextmanager
async def connect(config: BusConfig | None = None, *, name: str = "lwfm-bus") -> AsyncIterator[Bus]:
    """Open the bus described by ``config`` (default: from ``LWFM_BUS_*``, else embedded).

    ::

        async with lwfm_bus.connect() as bus:
            await bus.publish(event)
    """
    cfg = config if config is not None else load_config()
    async with open_event_bus(cfg, name=name, bus_class=Bus) as bus:
        assert isinstance(bus, Bus)
        yield bus
