"""Reaching a bus: an external NATS deployment, a running embedded server, or a new one.

On a laptop several processes share one embedded server: the one that starts it
records its URL in ``<home>/server.json`` and holds ``<home>/server.lock`` for its
life, so others find it, and a stale record (its owner died) is recognised because
the lock is free.  Start-up itself is serialised by ``<home>/start.lock``, so two
processes racing to start the server end up sharing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from pydantic import SecretStr

from .._config import BusConfig
from .._errors import ConfigError, LwfmBusError
from .._federation import FederationMember, load_federation, read_secret
from ._autostart import start_background, up_record
from ._eventbus import EventBus
from ._server import EmbeddedServer

__all__ = [
    "OUTAGE",
    "connection_lost_for",
    "connection_up",
    "federation_member",
    "hide_outages",
    "is_connection_trouble",
    "is_unanswered",
    "open_event_bus",
    "running_server_url",
    "serve_embedded",
]

log = logging.getLogger("lwfm_bus.connect")

try:  # POSIX: advisory locks.  Elsewhere the embedded server is simply not shared.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _try_lock(handle: IO[str], blocking: bool) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _record_path(home: Path) -> Path:
    return home / "server.json"


def running_server_url(home: Path) -> str | None:
    """URL of the embedded server another process runs for this home, if it is alive."""
    home.mkdir(parents=True, exist_ok=True)
    record = _record_path(home)
    if not record.exists():
        return None
    with open(home / "server.lock", "a+") as probe:
        if _try_lock(probe, blocking=False):
            return None  # nobody holds the lock: the record is stale
    url = (up_record(home) or {}).get("url")
    return url if isinstance(url, str) else None


def federation_member(config: BusConfig) -> FederationMember | None:
    """This process's place in its federation, read from the files the config names."""
    if config.federation_file is None:
        return None
    fed = load_federation(config.federation_file)
    fed.member(config.site)  # a clear error for a site that is not a member
    secret = read_secret(config.federation_secret_path(), config.site)
    return FederationMember(federation=fed, site=config.site, secret=secret)


def _as_member(config: BusConfig, member: FederationMember | None) -> BusConfig:
    """The hub's own processes log in to it; a leaf's local clients need no login."""
    if member is None or not member.is_hub or config.user or config.token or config.creds_file:
        return config
    login, password = member.site, member.secret
    return config.model_copy(update={"user": login, "password": SecretStr(password)})


@contextlib.asynccontextmanager
async def serve_embedded(config: BusConfig) -> AsyncIterator[EmbeddedServer]:
    """Start the embedded server for ``config.home`` and advertise it until exit.

    A federation member's server is configured from its federation file (see
    :mod:`._federation`): domain, and the hub's leaf listener or the leaf's remote.
    """
    member = federation_member(config)
    home = config.home
    home.mkdir(parents=True, exist_ok=True)
    owner = open(home / "server.lock", "a+")  # noqa: SIM115, ASYNC230 - held for the server's life
    try:
        if not _try_lock(owner, blocking=False):
            raise ConfigError(f"an embedded server for {home} is already running at {running_server_url(home)}")
        server = EmbeddedServer(config.embedded, config.store_dir(), name=f"lwfm-{config.site}", federation=member)
        async with server:
            record = _record_path(home)
            tmp = record.with_suffix(".tmp")
            facts: dict[str, object] = {"url": server.url, "pid": server.pid, "owner_pid": os.getpid()}
            if server.leaf_port:
                facts["leaf_port"] = server.leaf_port  # a federation hub: where its leaves connect
            tmp.write_text(json.dumps(facts))
            tmp.replace(record)
            try:
                yield server
            finally:
                with contextlib.suppress(OSError):
                    record.unlink()
    finally:
        owner.close()


def _tls_context(config: BusConfig) -> ssl.SSLContext | None:
    if not (config.tls_ca_file or config.tls_cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(config.tls_ca_file) if config.tls_ca_file else None)
    if config.tls_cert_file:
        if not config.tls_key_file:
            raise ConfigError("tls_cert_file is set but tls_key_file is not")
        ctx.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))
    return ctx


def _refused(config: BusConfig, servers: list[str]) -> str:
    """Why the server refused this client's login, and what to set, in one line."""
    where = ", ".join(servers)
    record = up_record(config.home) or {}
    if config.federation_file is None and ("leaf_port" in record or config.federation_secret_path().exists()):
        return (
            f"the bus at {where} refused this client: it serves a federation member, and this command was not "
            "given the federation file (--federation FILE, or LWFM_BUS_FEDERATION)"
        )
    return (
        f"the bus at {where} refused this client's login (Authorization Violation): check its credentials "
        "(LWFM_BUS_USER and LWFM_BUS_PASSWORD, LWFM_BUS_TOKEN or LWFM_BUS_CREDS)"
    )


OUTAGE: dict[str, Any] = {"lwfm_outage": True}  # ``extra=`` of a log line that only says the server is away


def hide_outages(handler: logging.Handler) -> None:
    """Drop the lines marked :data:`OUTAGE` from ``handler``.

    For a foreground command that says itself, in one line, that it lost the bus:
    the connection's and the reporters' running commentary would only repeat it.
    """
    handler.addFilter(lambda record: not getattr(record, "lwfm_outage", False))


class _Liveness:
    """Whether a connection is up, as events: set by the connection's callbacks."""

    def __init__(self) -> None:
        self.up, self.down = asyncio.Event(), asyncio.Event()
        self.up.set()


_LIVENESS: weakref.WeakKeyDictionary[NATS, _Liveness] = weakref.WeakKeyDictionary()


async def connection_lost_for(nc: NATS, grace_s: float) -> None:
    """Return once ``nc`` has been disconnected for ``grace_s`` seconds on end.

    nats-py reconnects for ever, and a subscription waits through an outage without a
    word: a foreground command that follows events races this to end with "lost the
    bus" instead of hanging, while a server that comes back within the grace is survived.
    """
    live = _LIVENESS.get(nc)
    if live is None:  # pragma: no cover - every connection is made by _nats_connect
        await anyio.sleep_forever()
        return
    while True:
        await live.down.wait()
        with anyio.move_on_after(grace_s):
            await live.up.wait()
            continue
        return


async def connection_up(nc: NATS) -> None:
    """Return once ``nc`` is connected (at once when it is): after an outage, when it reconnected.

    What a readiness check or a test waits on instead of polling ``is_connected``.
    """
    live = _LIVENESS.get(nc)
    if live is None:  # pragma: no cover - every connection is made by _nats_connect
        return
    await live.up.wait()


def is_connection_trouble(exc: BaseException, nc: NATS | None = None) -> bool:
    """Whether ``exc`` says the connection to NATS is down (or ``nc`` is reconnecting).

    Such a failure is retried by whoever met it and said once by the connection; callers
    log it in one line, without a traceback, instead of as a fault of their own.
    """
    if nc is not None and not nc.is_connected:
        return True
    return isinstance(
        exc,
        (
            OSError,
            nats.errors.ConnectionClosedError,
            nats.errors.UnexpectedEOF,
            nats.errors.StaleConnectionError,
            nats.errors.NoServersError,
        ),
    )


def is_unanswered(exc: BaseException, nc: NATS | None = None) -> bool:
    """Whether ``exc`` (or what caused it) says the server did not answer *now*, rather than refused.

    On a cluster, a node's loss means a few seconds in which JetStream has no leader for
    some streams and buckets: requests time out, find no responders, or are answered
    "temporarily unavailable" (503); then a new leader answers.  Such a question is
    asked again, not treated as a refusal (the connection's own trouble counts too).
    """
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:
        if is_connection_trouble(cause, nc) or isinstance(
            cause,
            (
                TimeoutError,
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.ServiceUnavailableError,
            ),
        ):
            return True
        cause, seen = cause.__cause__, seen + 1
    return False


def _is_refusal(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


async def _nats_connect(servers: list[str], config: BusConfig, name: str) -> NATS:
    failures: list[Exception] = []  # of the first connection's attempts: said once, in the error, if it fails
    connected = False

    said_outage = False  # an outage is said once, not once per reconnect attempt (one a second)
    live = _Liveness()

    async def on_error(exc: Exception) -> None:
        nonlocal said_outage
        if not connected:
            failures.append(exc)
            return
        if not is_connection_trouble(exc):
            log.warning("nats: %r", exc)
        elif said_outage:
            log.debug("nats: still reconnecting: %r", exc)
        else:
            said_outage = True
            log.warning("nats: connection lost (%r); reconnecting", exc, extra=OUTAGE)

    async def on_disconnect() -> None:
        live.up.clear()
        live.down.set()
        log.info("nats: disconnected")

    async def on_reconnect() -> None:
        nonlocal said_outage
        live.down.clear()
        live.up.set()
        if said_outage:
            log.warning("nats: reconnected", extra=OUTAGE)
        said_outage = False

    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": config.connect_timeout_s,
        # Bounded for the first connection, so a wrong address or credential is an error
        # rather than a hang; unbounded once connected (set below), so an outage is survived.
        "max_reconnect_attempts": 2,
        "reconnect_time_wait": 1.0,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if config.user:
        options["user"] = config.user
    if config.password:
        options["password"] = config.password.get_secret_value()
    if config.token:
        options["token"] = config.token.get_secret_value()
    if config.creds_file:
        options["user_credentials"] = str(config.creds_file)
    tls = _tls_context(config)
    if tls is not None:
        options["tls"] = tls
    try:
        nc = await nats.connect(**options)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        if any(_is_refusal(failure) for failure in failures):
            raise ConfigError(_refused(config, servers)) from exc
        # Never echo the options: they may hold secrets.
        why = failures[-1] if failures else exc  # nats-py's own error is only "no servers" after retries
        raise LwfmBusError(f"cannot connect to NATS at {', '.join(servers)}: {why!r}") from exc
    connected = True
    _LIVENESS[nc] = live
    for failure in failures:
        log.info("nats: before connecting: %r", failure)
    nc.options["max_reconnect_attempts"] = -1
    return nc


@contextlib.asynccontextmanager
async def open_event_bus(
    config: BusConfig, *, name: str = "lwfm-bus", bus_class: type[EventBus] = EventBus
) -> AsyncIterator[EventBus]:
    """Connect (starting the embedded server if needed), ensure the streams, yield the bus."""
    member = federation_member(config)
    config = _as_member(config, member)
    async with contextlib.AsyncExitStack() as stack:
        served = False
        if config.servers:
            servers = list(config.servers)
        else:
            servers, served = await _embedded_servers(config, stack)
        nc = await _nats_connect(servers, config, name)
        stack.push_async_callback(_close, nc)
        bus = bus_class(nc, config)
        bus.serves_embedded = served
        bus.federation = member
        stack.callback(_say_dead_letters, bus)
        await bus.ensure_streams()
        yield bus


async def _embedded_servers(config: BusConfig, stack: contextlib.AsyncExitStack) -> tuple[list[str], bool]:
    """The running server of this home; or, per ``config.autostart``, one started now.

    ``background`` starts ``lwfm-bus up`` detached (it outlives this process, so what
    was submitted runs); ``process`` serves it from this process for its lifetime;
    ``off`` refuses.
    """
    home = config.home
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "start.lock", "a+") as start:  # noqa: ASYNC230 - a lock file, never read
        await anyio.to_thread.run_sync(_try_lock, start, True)
        url = running_server_url(home)
        if url is not None:
            return [url], False
        if config.autostart == "off":
            raise ConfigError(f"no bus is running for {home}: start one with 'lwfm-bus --home {home} up'")
        if config.autostart == "background":
            pid = await anyio.to_thread.run_sync(start_background, config)
            url = running_server_url(home)
            if url is None:
                raise ConfigError(f"the background bus for {home} (pid {pid}) is ready but left no server record")
            print(
                f"lwfm-bus: nothing was running for {home}; started the bus in the background "
                f"(pid {pid}, log {home / 'up.log'}). 'lwfm-bus down' stops it.",
                file=sys.stderr,
                flush=True,
            )
            return [url], False
        server = await stack.enter_async_context(serve_embedded(config))
        return [server.url], True


def _say_dead_letters(bus: EventBus) -> None:
    """One line for every bad message met, not one per message (a history can hold thousands)."""
    summary = bus.dead_letter_summary()
    if summary is not None:
        log.warning("%s", summary)


async def _close(nc: NATS) -> None:
    if nc.is_closed:
        return
    try:
        with anyio.fail_after(5):
            await nc.drain()
    except (TimeoutError, nats.errors.Error):
        await nc.close()
