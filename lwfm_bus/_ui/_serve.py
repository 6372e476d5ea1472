"""uvicorn inside the caller's anyio task group: ``await tg.start(serve_ui, bus, settings)``.

``start`` returns the URL once the socket listens (it is bound here, before uvicorn starts,
so a browser that connects at once waits in the backlog rather than being refused).
Cancelling the task stops it: open event streams are ended, uvicorn shuts down
gracefully within :data:`lwfm_bus._http.SHUTDOWN_S`, and the socket is closed.  uvicorn's own signal
handling is off: Ctrl-C belongs to the command that embeds the dashboard.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from .._client import Bus
from .._http import serve_asgi, url_of
from ._app import build_app
from ._settings import UiSettings, check_listen

__all__ = ["serve_ui", "url_of"]


async def serve_ui(bus: Bus, settings: UiSettings, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the dashboard over ``bus`` until cancelled; ``task_status.started(url)`` once it listens.

    Raises :class:`~lwfm_bus.ConfigError` for a host beyond loopback without a token, and
    :class:`OSError` when the address cannot be bound (a port in use).
    """
    check_listen(settings)
    stopping = anyio.Event()
    app = build_app(bus, settings, stopping)
    await serve_asgi(app, settings.host, settings.port, name="dashboard", on_stop=stopping.set, task_status=task_status)
