"""uvicorn inside the caller's anyio task group: ``await tg.start(serve_ui, bus, settings)``.

``start`` returns the URL once the socket listens (it is bound here, before uvicorn starts,
so a browser that connects at once waits in the backlog rather than being refused).
Cancelling the task stops it: open event streams are ended, uvicorn shuts down
gracefully within :data:`SHUTDOWN_S`, and the socket is closed.  uvicorn's own signal
handling is off: Ctrl-C belongs to the command that embeds the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from anyio.abc import TaskStatus

from .._client import Bus
from ._app import build_app
from ._settings import UiSettings, check_listen

__all__ = ["serve_ui", "url_of"]

log = logging.getLogger("lwfm_bus.ui")

SHUTDOWN_S = 5.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(settings: UiSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(host: str, port: int) -> str:
    """``http://127.0.0.1:8765/``; an IPv6 address in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def serve_ui(bus: Bus, settings: UiSettings, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the dashboard over ``bus`` until cancelled; ``task_status.started(url)`` once it listens.

    Raises :class:`~lwfm_bus.ConfigError` for a host beyond loopback without a token, and
    :class:`OSError` when the address cannot be bound (a port in use).
    """
    check_listen(settings)
    sock = _listen(settings)
    stopping = anyio.Event()
    app = build_app(bus, settings, stopping)
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=2)
    server = _Server(config)
    done = anyio.Event()

    async def run() -> None:
        # Shielded: it is stopped by should_exit (a graceful shutdown), never by cancellation.
        try:
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        finally:
            done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            port = sock.getsockname()[1]
            task_status.started(url_of(settings.host, port))
            try:
                await done.wait()  # it ends by itself only when it failed: the task group raises why
            finally:
                with anyio.CancelScope(shield=True):
                    stopping.set()
                    server.should_exit = True
                    with anyio.move_on_after(SHUTDOWN_S):
                        await done.wait()
                    if not done.is_set():
                        server.force_exit = True
                        log.warning("the dashboard did not stop within %s s", SHUTDOWN_S)
    finally:
        sock.close()
