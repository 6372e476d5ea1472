"""Notifications: a run's end POSTed to a webhook once, with two engines judging it.

The webhook is a real HTTP server on 127.0.0.1 in this process (a thread), recording
every POST; the bus is a real embedded one with its engine and local agent, plus a
second engine replica in the test's process.  Every wait is on a request arriving or
a job's end, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import lwfm_bus as lb
from lwfm_bus._config import BusConfig
from lwfm_bus._errors import PipelineError
from lwfm_bus._notify import Notify, notify_triggers
from lwfm_bus._notifying import _post
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline


class _Webhook:
    """A local HTTP server that records each POST's JSON and answers with the next queued status."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.posts: list[dict[str, Any]] = []  # what it took (answered 200)
        self.tried: list[dict[str, Any]] = []  # every POST, whatever it answered
        self.paths: list[str] = []
        self.answers: list[int] = []
        self._loop = loop
        self._arrived = asyncio.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.paths.append(self.path)
                status = hook.answers.pop(0) if hook.answers else 200
                hook.tried.append(json.loads(body))
                if status == 200:
                    hook.posts.append(json.loads(body))
                    loop.call_soon_threadsafe(hook._arrived.set)
                self.send_response(status)
                if status in (301, 302, 303, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.end_headers()

            def do_GET(self) -> None:
                hook.paths.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    async def delivered(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        async def until() -> None:
            while len(self.posts) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), timeout)
        return self.posts


@contextmanager
def _webhook(loop: asyncio.AbstractEventLoop) -> Iterator[_Webhook]:
    hook = _Webhook(loop)
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        thread.join(10)


@asynccontextmanager
async def _two_engines(home: Path) -> AsyncIterator[lb.Bus]:
    """The home's bus (its engine runs in the background bus) and a second engine replica here."""
    async with lb.connect(BusConfig(home=home)) as bus, lb.serve_engine(bus, lb.EngineConfig(ack_wait_s=2)):
        yield bus


def _pipeline(tmp_path: Path, url: str, on: str, failing: bool) -> Path:
    path = tmp_path / "p.yaml"
    exit_code = 4 if failing else 0
    path.write_text(
        textwrap.dedent(
            f"""
            pipeline: 1
            name: told
            notify: {{url: "{url}", on: {on}}}
            steps:
              first:
                parallel: 3
                run: [python3, -c, "pass"]
              second:
                after: first
                run: [python3, -c, "import sys; sys.exit({exit_code})"]
            """
        )
    )
    return path


async def _trigger_states(bus: lb.Bus, names: str) -> dict[str, str]:
    return {t.name or "": t.state for t in await bus.triggers() if (t.name or "").startswith(names)}


async def test_a_failed_run_is_notified_once_with_the_failed_job(tmp_path: Path) -> None:
    with _webhook(asyncio.get_running_loop()) as hook:
        async with _two_engines(tmp_path / "home") as bus:
            report = await run_pipeline(bus, load_pipeline(_pipeline(tmp_path, hook.url, "end", True)), print)
            assert not report.ok
            [post] = await hook.delivered(1)
            assert (post["outcome"], post["workflow_id"], post["title"]) == ("failure", report.workflow_id, "told")
            assert [(j["name"], j["state"], j["exit_code"]) for j in post["jobs"]] == [("told:second", "FAILED", 4)]
            assert "failed" in post["text"] and "told:second" in post["text"]
            # The final job failed, so the success join can no longer fire: it expired.
            states = await _wait_trigger_state(bus, "notify on success", "expired")
            assert states == {"notify on failure: told": "fired", "notify on success: told": "expired"}
            [sender] = [t for t in await bus.triggers() if t.name == "notify on failure: told"]
            assert sender.last_job_id is not None
            assert (await bus.wait(sender.last_job_id, timeout=30)).state is lb.JobState.COMPLETE
            jobs = [r.name for r in await bus.jobs(limit=None) if (r.name or "").startswith("notify told")]
            assert jobs == ["notify told: failure"], "one message, sent by one job"
        assert len(hook.posts) == 1


async def test_a_run_that_completes_is_notified_once_on_success(tmp_path: Path) -> None:
    with _webhook(asyncio.get_running_loop()) as hook:
        async with _two_engines(tmp_path / "home") as bus:
            report = await run_pipeline(bus, load_pipeline(_pipeline(tmp_path, hook.url, "end", False)), print)
            assert report.ok
            [post] = await hook.delivered(1)
            assert (post["outcome"], post["workflow_id"]) == ("success", report.workflow_id)
            assert [j["state"] for j in post["jobs"]] == ["COMPLETE"] * 4, "every step's final jobs"
            states = await _wait_trigger_state(bus, "notify on failure", "cancelled")
            assert states == {"notify on failure: told": "cancelled", "notify on success: told": "fired"}
        assert len(hook.posts) == 1


async def test_a_webhook_that_fails_is_sent_again_by_the_retry_policy(tmp_path: Path) -> None:
    with _webhook(asyncio.get_running_loop()) as hook:
        hook.answers = [500]
        async with lb.connect(BusConfig(home=tmp_path / "home")) as bus:
            report = await run_pipeline(bus, load_pipeline(_pipeline(tmp_path, hook.url, "failure", True)), print)
            assert not report.ok
            [post] = await hook.delivered(1, timeout=90)
            assert post["outcome"] == "failure"
            [sender] = [t for t in await bus.triggers() if t.name == "notify on failure: told"]
            assert sender.last_job_id is not None
            final = await bus.wait(sender.last_job_id, timeout=30)  # follows the attempts to the last
            assert (final.state, final.attempt) == (lb.JobState.COMPLETE, 2)
            refused, taken = hook.tried
            assert refused["id"] == taken["id"] == sender.last_job_id, "one message id, for a receiver to dedupe"
            first = await bus.status(sender.last_job_id)
            assert (first.state, first.retry_next) == (lb.JobState.FAILED, final.job_id)


async def _wait_trigger_state(bus: lb.Bus, name: str, state: str, timeout: float = 30) -> dict[str, str]:
    """The notify triggers' states, once the one named ``name...`` is in ``state`` (woken by trigger events)."""
    async with bus.subscribe("lwfm.*.trigger.>", from_start=True) as events:

        async def until() -> dict[str, str]:
            while True:
                states = await _trigger_states(bus, "notify on")
                if any(n.startswith(name) and s == state for n, s in states.items()):
                    return states
                await events.next(timeout=timeout)

        return await asyncio.wait_for(until(), timeout)


@pytest.mark.parametrize("url", ["ftp://example.org/x", "file:///etc/passwd", "http://", "not a url"])
def test_a_webhook_address_must_be_http_or_a_secret(url: str) -> None:
    with pytest.raises(ValidationError, match="http"):
        Notify(url=url)
    assert Notify(url="secret:SLACK_HOOK").url == "secret:SLACK_HOOK"


def test_a_nested_pipeline_cannot_notify(tmp_path: Path) -> None:
    (tmp_path / "inner.yaml").write_text(
        "pipeline: 1\nname: inner\nnotify: {url: 'https://example.org/h'}\nsteps:\n  a:\n    run: [python3, -c, pass]\n"
    )
    outer = tmp_path / "outer.yaml"
    outer.write_text("pipeline: 1\nname: outer\nsteps:\n  sub:\n    pipeline: inner.yaml\n")
    with pytest.raises(PipelineError, match="only the file run notifies"):
        load_pipeline(outer)


async def test_a_successful_run_withdraws_its_failure_notification(tmp_path: Path) -> None:
    with _webhook(asyncio.get_running_loop()) as hook:
        async with lb.connect(BusConfig(home=tmp_path / "home")) as bus:
            report = await run_pipeline(bus, load_pipeline(_pipeline(tmp_path, hook.url, "failure", False)), print)
            assert report.ok
            states = await _wait_trigger_state(bus, "notify on failure", "cancelled")
            assert states == {"notify on failure: told": "cancelled"}, "no longer due: it cannot fire late"
        assert hook.tried == []


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """A webhook that answers 302 has not taken the message; the POST is not turned into a GET elsewhere."""
    loop = asyncio.new_event_loop()
    try:
        with _webhook(loop) as hook:
            hook.answers = [302]
            with pytest.raises(lb.JobError, match="HTTP 302"):
                _post(hook.url, {"id": "x", "outcome": "failure"})
            assert hook.paths == ["/hook"], "the redirect's target was never asked"
    finally:
        loop.close()


def test_a_plain_webhook_address_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="lwfm_bus.client")
    notify_triggers(Notify(url="secret:HOOK"), lb.new_id(), "quiet", ["j"], "python3")
    assert not caplog.records
    notify_triggers(Notify(url="https://hooks.example.org/T0/B0/xyz"), lb.new_id(), "told", ["j"], "python3")
    [said] = [r.getMessage() for r in caplog.records]
    assert "secret:NAME" in said and "xyz" not in said  # never the address itself
