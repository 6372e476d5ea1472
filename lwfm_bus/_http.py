"""uvicorn inside the caller's anyio task group, for the dashboard and the metrics server.

``await tg.start(serve_asgi, app, host, port, name=...)`` returns the URL once the socket
listens: it is bound here, before uvicorn starts, so a client that connects at once waits
in the backlog rather than being refused.  Cancelling the task stops it: ``on_stop`` runs
first (the dashboard ends its open event streams there), uvicorn shuts down gracefully
within :data:`SHUTDOWN_S`, and the socket is closed.  uvicorn's own signal handling is
off: signals belong to the command that embeds the server.

Imported only by the servers themselves: uvicorn comes with the ``ui`` and ``metrics``
extras, not with the core.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

__all__ = ["SHUTDOWN_S", "serve_asgi", "url_of"]

log = logging.getLogger("lwfm_bus.http")

SHUTDOWN_S = 5.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
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


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    name: str,
    on_stop: Callable[[], None] | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started(url)`` once it listens.

    Raises :class:`OSError` when the address cannot be bound (a port in use).  ``name``
    says what did not stop in time, in the one warning this may log.
    """
    sock = _listen(host, port)
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
            task_status.started(url_of(host, sock.getsockname()[1]))
            try:
                await done.wait()  # it ends by itself only when it failed: the task group raises why
            finally:
                with anyio.CancelScope(shield=True):
                    if on_stop is not None:
                        on_stop()
                    server.should_exit = True
                    with anyio.move_on_after(SHUTDOWN_S):
                        await done.wait()
                    if not done.is_set():
                        server.force_exit = True
                        log.warning("the %s did not stop within %s s", name, SHUTDOWN_S)
    finally:
        sock.close()
