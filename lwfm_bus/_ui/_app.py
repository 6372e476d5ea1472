"""The dashboard's routes, and the guards every request passes.

Guards, in order:

* **Host.** Only the names this server was asked to listen on (and, on loopback, ``localhost``
  and ``127.0.0.1`` on any port, which is what ``ssh -L`` forwards): a web page elsewhere cannot
  reach the dashboard by rebinding its own name to 127.0.0.1.
* **Token.** With ``--token``, every request carries it: once in the URL that ``lwfm-bus ui``
  prints, which sets a cookie (HttpOnly, SameSite=Strict) and redirects to the same page without it.
* **Actions.** Every POST is refused (403) unless ``--allow-actions``; then it needs the CSRF token
  the page read from ``/api/session`` (a same-origin read) in ``X-CSRF-Token``, and an ``Origin``,
  when the browser sends one, that is this server.

Every response forbids inline script (Content-Security-Policy), so even markup that slipped
through could not run; the page renders data with ``textContent`` only.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._client import Bus
from .._config import is_loopback
from .._errors import InvalidTokenError, LwfmBusError, TriggerError, UnknownDataError, UnknownJobError
from .._subjects import check_token
from ._overviews import data_doc, dead_letters_doc, find_doc, sites_doc, triggers_doc
from ._resume import Resumer, ResumeRefused
from ._settings import UiSettings
from ._stream import EventStream, check_filter, resume_after
from ._views import MapCache, job_doc, log_tail, stream_seq, workflow_doc, workflows_doc

__all__ = ["build_app"]

log = logging.getLogger("lwfm_bus.ui")

COOKIE = "lwfm_ui_token"
CSRF_HEADER = "x-csrf-token"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _static_dir() -> str:
    return str(resources.files("lwfm_bus._ui").joinpath("static"))


class _Guard:
    """Token, read-only and CSRF checks (see the module docstring), and the security headers."""

    def __init__(self, app: ASGIApp, settings: UiSettings, csrf: str) -> None:
        self._app = app
        self._settings = settings
        self._csrf = csrf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        refusal = self._refusal(Request(scope))
        await (refusal or self._app)(scope, receive, with_headers)

    def _refusal(self, request: Request) -> Response | None:
        token = self._settings.token
        if token:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                rest = request.url.remove_query_params("token")
                path = "/" + rest.path.lstrip("/")  # never '//host': a redirect stays on this server
                redirect = RedirectResponse(path + (f"?{rest.query}" if rest.query else ""), status_code=303)
                redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return redirect
            cookie = request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(cookie.encode(), token.encode()):
                return PlainTextResponse("a token is needed: open the URL that 'lwfm-bus ui' printed\n", 401)
        if request.method in ("GET", "HEAD"):
            return None
        if request.method != "POST":
            return PlainTextResponse("method not allowed\n", 405)
        if not self._settings.allow_actions:
            return PlainTextResponse("read-only: start the dashboard with --allow-actions to act\n", 403)
        given_csrf = request.headers.get(CSRF_HEADER, "")
        if not given_csrf or not hmac.compare_digest(given_csrf.encode(), self._csrf.encode()):
            return PlainTextResponse("missing or wrong CSRF token\n", 403)
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return PlainTextResponse("cross-origin request refused\n", 403)
        return None


def _allowed_hosts(settings: UiSettings) -> list[str]:
    if not is_loopback(settings.host):
        return ["*"]  # a token guards it; the names it is reached by are not known here
    return ["127.0.0.1", "localhost", "::1", "[::1]", settings.host]


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": f"no {what} is known to this bus"}, status_code=404)


def _token_arg(request: Request, name: str, what: str) -> str:
    return check_token(request.path_params[name], what)


def build_app(bus: Bus, settings: UiSettings, stopping: anyio.Event | None = None) -> Starlette:
    """The dashboard over ``bus``; event streams end when ``stopping`` is set."""
    csrf = secrets.token_urlsafe(32)
    maps = MapCache()
    resumer = Resumer(bus)
    stop = stopping if stopping is not None else anyio.Event()

    async def index(request: Request) -> Response:
        return FileResponse(f"{_static_dir()}/index.html", headers={"cache-control": "no-store"})

    async def session(request: Request) -> Response:
        return JSONResponse(
            {"csrf": csrf, "allow_actions": settings.allow_actions, "seq": await stream_seq(bus)},
            headers={"cache-control": "no-store"},
        )

    async def workflows(request: Request) -> Response:
        return JSONResponse(await workflows_doc(bus))

    async def workflow(request: Request) -> Response:
        doc = await workflow_doc(bus, _token_arg(request, "workflow_id", "workflow id"), maps)
        return _not_found("workflow") if doc is None else JSONResponse(doc)

    async def job(request: Request) -> Response:
        doc = await job_doc(bus, _token_arg(request, "job_id", "job id"))
        return _not_found("job") if doc is None else JSONResponse(doc)

    async def job_log(request: Request) -> Response:
        job_id = _token_arg(request, "job_id", "job id")
        stream = request.query_params.get("stream", "stdout")
        try:
            text = await log_tail(bus, job_id, stream)
        except UnknownJobError:
            return _not_found("job")
        except (LwfmBusError, OSError) as exc:
            return JSONResponse({"text": "", "error": f"the log cannot be read now: {exc}"})
        return JSONResponse({"text": text})

    async def events(request: Request) -> Response:
        subject = check_filter(request.query_params.get("subject"))
        resumed = request.headers.get("last-event-id")
        after = resume_after(resumed, request.query_params.get("after"))
        log.debug("event stream %s after %d%s", subject, after, " (Last-Event-ID)" if resumed else "")
        return EventStream(bus, subject, after, stop)  # type: ignore[return-value]

    async def triggers(request: Request) -> Response:
        workflow_id = request.query_params.get("workflow") or None
        if workflow_id is not None:
            check_token(workflow_id, "workflow id")
        return JSONResponse(await triggers_doc(bus, workflow_id))

    async def withdraw_trigger(request: Request) -> Response:
        trigger_id = _token_arg(request, "trigger_id", "trigger id")
        try:
            await bus.cancel_trigger(trigger_id, reason="withdrawn from the dashboard")
        except TriggerError:
            return _not_found("trigger")
        log.warning("dashboard: trigger %s withdrawn", trigger_id)
        return JSONResponse({"trigger_id": trigger_id, "withdraw": "requested"})

    async def find(request: Request) -> Response:
        try:
            return JSONResponse(await find_doc(bus, request.query_params.get("q") or "{}"))
        except ValueError as exc:  # pydantic's ValidationError is one
            return JSONResponse({"error": f"not a query: {exc}"}, status_code=400)

    async def data(request: Request) -> Response:
        try:
            return JSONResponse(await data_doc(bus, request.path_params["data_id"]))
        except UnknownDataError:
            return _not_found("data")

    async def sites(request: Request) -> Response:
        return JSONResponse(await sites_doc(bus))

    async def dead_letters(request: Request) -> Response:
        return JSONResponse(await dead_letters_doc(bus))

    async def subject_filter(request: Request) -> Response:
        # What a page asks when its event stream was refused: a wrong filter is said, in words.
        return JSONResponse({"subject": check_filter(request.query_params.get("subject"))})

    async def cancel_job(request: Request) -> Response:
        job_id = _token_arg(request, "job_id", "job id")
        await bus.status(job_id)  # UnknownJobError: 404
        await bus.cancel(job_id, wait_s=None)
        log.warning("dashboard: cancel of job %s requested", job_id)
        return JSONResponse({"job_id": job_id, "cancel": "requested"})

    async def cancel_workflow(request: Request) -> Response:
        workflow_id = _token_arg(request, "workflow_id", "workflow id")
        log.warning("dashboard: cancel of workflow %s requested", workflow_id)
        stopped = await bus.cancel_workflow(workflow_id, reason="cancelled from the dashboard", wait_s=30.0)
        return JSONResponse(
            {
                "workflow_id": stopped.workflow_id,
                "triggers_withdrawn": list(stopped.triggers_withdrawn),
                "jobs_cancelled": list(stopped.jobs_cancelled),
                "still_active": list(stopped.still_active),
            }
        )

    async def resume_workflow(request: Request) -> Response:
        workflow_id = _token_arg(request, "workflow_id", "workflow id")
        try:
            started = await resumer.resume(workflow_id)
        except ResumeRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        log.warning("dashboard: resume of run %s started (process %d)", workflow_id, started["pid"])
        return JSONResponse(started, status_code=202)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def unknown_job(request: Request, exc: Exception) -> Response:
        return _not_found("job")

    routes = [
        Route("/", index),
        Route("/api/session", session),
        Route("/api/workflows", workflows),
        Route("/api/workflows/{workflow_id}", workflow),
        Route("/api/workflows/{workflow_id}/cancel", cancel_workflow, methods=["POST"]),
        Route("/api/workflows/{workflow_id}/resume", resume_workflow, methods=["POST"]),
        Route("/api/jobs/{job_id}", job),
        Route("/api/jobs/{job_id}/log", job_log),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/triggers", triggers),
        Route("/api/triggers/{trigger_id}/withdraw", withdraw_trigger, methods=["POST"]),
        Route("/api/dead-letters", dead_letters),
        Route("/api/sites", sites),
        Route("/api/data", find),
        Route("/api/data/{data_id}", data),
        Route("/events", events),
        Route("/api/filter", subject_filter),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=_allowed_hosts(settings)),
        Middleware(_Guard, settings=settings, csrf=csrf),
    ]
    handlers: dict[Any, Any] = {UnknownJobError: unknown_job, InvalidTokenError: bad_request}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
