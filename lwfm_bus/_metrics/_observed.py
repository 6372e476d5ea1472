"""What a process runs, as its metrics and ``/readyz`` see it: set as each part comes up, cleared as it stops.

The metrics server starts first, so ``/healthz`` answers while the process still connects;
``/readyz`` says 200 only once the bus is connected and every part this process is
meant to run (an engine replica, site agents) has started, and 503 again once they stop
or while the connection to NATS is down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .._bus._eventbus import EventBus
from .._engine._replica import Engine
from .._sites._agent import SiteAgent

__all__ = ["Observed"]


@dataclass
class Observed:
    """The bus, engine and agents of this process; ``wants_*`` say what readiness waits for."""

    wants_engine: bool = False
    wants_agents: bool = False
    bus: EventBus | None = None
    engine: Engine | None = None
    agents: tuple[SiteAgent, ...] = field(default_factory=tuple)

    @contextlib.contextmanager
    def running(self, bus: EventBus, engine: Engine | None = None, agents: Sequence[SiteAgent] = ()) -> Iterator[None]:
        """Watch these while the block runs; ``/readyz`` turns 503 as it is left."""
        self.bus, self.engine, self.agents = bus, engine, tuple(agents)
        try:
            yield
        finally:
            self.bus, self.engine, self.agents = None, None, ()

    def checks(self) -> dict[str, bool]:
        """Each readiness condition and whether it holds now (no I/O: cheap for a probe)."""
        nc = self.bus.nats if self.bus is not None else None
        out = {"nats_connected": nc is not None and bool(nc.is_connected)}
        if self.wants_engine:
            out["engine_started"] = self.engine is not None
        if self.wants_agents:
            out["agents_started"] = bool(self.agents)
        return out

    def ready(self) -> bool:
        return all(self.checks().values())
