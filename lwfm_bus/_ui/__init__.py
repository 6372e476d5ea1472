"""The web dashboard: every workflow live in the browser, its metro map coloured as it runs.

A Starlette application over one connected :class:`~lwfm_bus.Bus` (JSON views of the index,
a Server-Sent Events stream of the bus's events, a few POST actions), served by uvicorn
inside the caller's anyio task group, and a page of plain ES modules under ``static/``
that renders it.  Starlette and uvicorn come with the ``ui`` extra (``lwfm-bus[ui]``); the
rest of lwfm_bus never imports this package, so it works without them.

``_settings`` (who may listen where), ``_views`` (workflows, one workflow with its metro map,
one job), ``_overviews`` (triggers, data, sites, dead letters), ``_stream`` (the SSE stream,
resumable by sequence), ``_app`` (routes, token, CSRF), ``_serve`` (uvicorn).
"""

from __future__ import annotations

from ._app import build_app
from ._serve import serve_ui
from ._settings import UiSettings, check_listen

__all__ = ["UiSettings", "build_app", "check_listen", "serve_ui"]
