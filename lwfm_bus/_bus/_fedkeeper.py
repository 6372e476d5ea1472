"""Getting a federation's sources going as soon as a site appears, not ~30 s later.

A site's stream sources every other site's.  When a site starts for the first time
its stream does not exist yet as its link comes up, so the other sites' first
requests for it fail, and nats-server then waits about 30 s before it asks again.
To cut that short, each site announces itself once its stream exists (a heartbeat on
``lwfm.<site>.site._._.heartbeat``, which also crosses the links as a plain message),
and every site that hears it restarts its sources *of that site* that have never been
active.  Only never-active sources are touched: nothing was copied from them, so
starting them afresh loses and duplicates nothing.  Sources that were active resume
by themselves (nats-server resyncs them when a link comes back).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors

from .._events import SiteHeartbeat, make_event
from .._subjects import ROOT
from ._eventbus import STREAM

if TYPE_CHECKING:
    from ._eventbus import EventBus

__all__ = ["SourceState", "keep_sources", "keeping_sources", "source_states"]

log = logging.getLogger("lwfm_bus.federation")


@dataclass(frozen=True)
class SourceState:
    """How far one source of this site's stream has come."""

    site: str  # the domain it comes from
    filter: str | None
    lag: int
    active_s: float | None  # seconds since the last contact; None: never
    error: str | None


async def source_states(bus: EventBus) -> tuple[int, list[SourceState]]:
    """Events stored here, and each source's state, from the server's raw answer.

    Raw, because nats-py's ``StreamSourceInfo`` drops a source's filter and domain.
    """
    reply = await bus.nats.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=bus.config.request_timeout_s)
    info = json.loads(reply.data)
    states = [
        SourceState(
            site=str((s.get("external") or {}).get("api", "$JS.?.API")).split(".")[1],
            filter=s.get("filter_subject"),
            lag=int(s.get("lag", 0)),
            active_s=s["active"] / 1e9 if s.get("active", -1) >= 0 else None,
            error=(s.get("error") or {}).get("description"),
        )
        for s in info.get("sources") or []
    ]
    return int(info.get("state", {}).get("messages", 0)), sorted(states, key=lambda s: (s.site, s.filter or ""))


async def _never_active(bus: EventBus, site: str) -> bool:
    """Whether any source of ``site`` in our stream has never been active."""
    _, states = await source_states(bus)
    return any(s.site == site and s.active_s is None for s in states)


async def _restart_sources_of(bus: EventBus, site: str) -> None:
    js = bus.jetstream
    config = (await js.stream_info(STREAM)).config
    api = f"$JS.{site}.API"
    keep = [s for s in config.sources or [] if not (s.external and s.external.api == api)]
    if len(keep) == len(config.sources or []):
        return
    full = config.sources
    config.sources = keep
    await js.update_stream(config)
    config.sources = full
    await js.update_stream(config)
    log.info("restarted the sources of site %s, which had never answered", site)


async def keep_sources(bus: EventBus) -> None:
    """Announce this site, then restart never-active sources of each site heard from (until cancelled)."""
    member = bus.federation
    if member is None:
        return
    owner = {name: site for site in member.federation.sites for name in member.federation.names_of(site)}
    sub = await bus.nats.subscribe(f"{ROOT}.*.site._._.heartbeat")
    try:
        hello = SiteHeartbeat(site=member.site, adapter="federation", info="stream ready")
        await bus.publish(make_event(hello, source=f"/sites/{member.site}/federation"))
        async for msg in sub.messages:
            site = owner.get(msg.subject.split(".")[1])
            if site is None or site == member.site:
                continue
            try:
                if await _never_active(bus, site):
                    await _restart_sources_of(bus, site)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, ValueError) as exc:
                log.warning("could not restart the sources of site %s: %r", site, exc)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


@contextlib.asynccontextmanager
async def keeping_sources(bus: EventBus) -> AsyncIterator[None]:
    """Run :func:`keep_sources` for as long as the block runs (nothing outside a federation).

    Started with a site's engine (``connect`` with the engine on, ``lwfm-bus engine``):
    the process that judges a site's triggers is the one that needs its sources going.
    """
    if bus.federation is None:
        yield
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_sources, bus)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
