"""The bus's events as Server-Sent Events: each message's ``id`` is its stream sequence.

A browser that loses the connection reconnects by itself and sends the last id it saw
(``Last-Event-ID``); the page may also reconnect on its own with ``?after=SEQ``.  Either
way the stream resumes at the next sequence, so a state change is neither missed nor
counted twice: the stream is gapless and ordered, and the sequence says where one is.

One JetStream ordered consumer per connection, closed when the browser goes away or the
dashboard stops.  A comment line every :data:`KEEPALIVE_S` keeps ``ssh -L`` tunnels and
proxies from closing a quiet connection.
"""

from __future__ import annotations

import contextlib
import json
import logging

import anyio
from starlette.types import Message, Receive, Scope, Send

from .._client import Bus
from .._errors import InvalidTokenError
from .._events import encode_event
from .._subjects import ROOT, check_token

__all__ = ["EventStream", "check_filter", "resume_after"]

log = logging.getLogger("lwfm_bus.ui")

KEEPALIVE_S = 15.0
RETRY_MS = 1000  # how soon a browser reconnects after losing the stream


def check_filter(text: str | None) -> str:
    """A NATS subject filter under ``lwfm.``; :class:`InvalidTokenError` for anything else."""
    subject = text or f"{ROOT}.>"
    tokens = subject.split(".")
    if tokens[0] != ROOT or len(tokens) > 16:  # parked messages (lwfm_dlq.) are not events
        raise InvalidTokenError(f"a subject filter must start with '{ROOT}.', not {subject!r}")
    for i, part in enumerate(tokens):
        if (part == ">" and i == len(tokens) - 1) or part == "*":
            continue
        check_token(part, "subject token")
    return subject


def resume_after(last_event_id: str | None, after: str | None) -> int:
    """The sequence the browser has (``Last-Event-ID`` wins over ``?after``); 0 for everything."""
    for text in (last_event_id, after):
        if text is not None and text.strip().isdigit():
            return int(text.strip())
    return 0


class EventStream:
    """An ASGI response streaming ``subject``'s events after sequence ``after`` until one side stops."""

    def __init__(self, bus: Bus, subject: str, after: int, stopping: anyio.Event) -> None:
        self._bus = bus
        self._subject = subject
        self._after = after
        self._stopping = stopping
        self._send_lock = anyio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send(send, f"retry: {RETRY_MS}\n\n")
        async with anyio.create_task_group() as tg:

            async def until_gone() -> None:
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                tg.cancel_scope.cancel()

            async def until_stopping() -> None:
                await self._stopping.wait()
                tg.cancel_scope.cancel()

            async def keepalive() -> None:
                while True:
                    await anyio.sleep(KEEPALIVE_S)
                    await self._send(send, ": keepalive\n\n")

            tg.start_soon(until_gone)
            tg.start_soon(until_stopping)
            tg.start_soon(keepalive)
            await self._pump(send)
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            with contextlib.suppress(OSError):  # the browser is gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        async with self._bus.subscribe(self._subject, start_seq=self._after + 1) as events:
            async for event in events:
                # The event's own JSON, embedded as it is (no parse and dump again); JSON escapes every
                # control character, so no line of data can end the message early.
                seq = events.last_seq
                subject, body = json.dumps(event.nats_subject()), encode_event(event).decode()
                data = f'{{"seq": {seq}, "subject": {subject}, "event": {body}}}'
                await self._send(send, f"id: {seq}\ndata: {data}\n\n")

    async def _send(self, send: Send, text: str) -> None:
        async with self._send_lock:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
