"""Serving the dashboard: where it may listen, its token, read-only mode and CSRF, and the command.

Plain HTTP against the real server (no browser needed): the guards are the server's, and a
browser would only add its own same-origin rules on top.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest

import lwfm_bus as lb
from lwfm_bus._config import BusConfig
from lwfm_bus._ui import UiSettings, serve_ui
from tests.ui._browser import serving

CLI = [sys.executable, "-m", "lwfm_bus"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def http(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await anyio.to_thread.run_sync(lambda: _http(url, method, headers))


@pytest.mark.parametrize(
    "argv",
    [["ui", "--host", "0.0.0.0"], ["ui", "--host", "192.0.2.1", "--port", "0"], ["up", "--ui", "--ui-host", "::"]],
)
def test_the_command_refuses_a_host_beyond_loopback_without_a_token(argv: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "LWFM_BUS_HOME": str(tmp_path / "home")}
    done = subprocess.run([*CLI, *argv], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("lwfm-bus: error: refusing to serve the dashboard on ")
    assert "without a token" in lines[0]
    assert not (tmp_path / "home" / "server.json").exists()  # nothing was started


async def test_serve_ui_refuses_too(bus: lb.Bus) -> None:
    with pytest.raises(lb.ConfigError, match="beyond loopback"):
        await serve_ui(bus, UiSettings(host="0.0.0.0", port=0))


async def test_a_token_is_needed_beyond_loopback_and_set_once_as_a_cookie(bus: lb.Bus) -> None:
    async with serving(bus, UiSettings(host="0.0.0.0", port=0, token="s3cret-token")) as url:
        local = url.replace("0.0.0.0", "127.0.0.1")
        status, headers, body = await http(local + "api/session")
        assert status == 401 and b"token" in body
        assert "script-src 'self'" in headers["content-security-policy"]
        status, headers, _ = await http(local + "/evil.example/?token=s3cret-token")
        assert status == 303 and headers["location"] == "/evil.example/"  # never '//evil.example/': stays here
        status, _, _ = await http(local + "api/session?token=wrong")
        assert status == 401
        status, headers, _ = await http(local + "api/session?token=s3cret-token")
        assert status == 303 and headers["location"] == "/api/session"
        cookie = headers["set-cookie"].split(";", 1)[0]
        assert "httponly" in headers["set-cookie"].lower() and "samesite=strict" in headers["set-cookie"].lower()
        status, headers, body = await http(local + "api/session", headers={"cookie": cookie})
        assert status == 200
        assert "s3cret-token" not in body.decode()  # the page never needs to read it


async def test_read_only_refuses_every_post_and_actions_need_the_csrf_token(bus: lb.Bus) -> None:
    job = await bus.submit(lb.JobDefn.of(["true"]))
    await bus.wait(job.job_id, timeout=60)
    cancel = f"api/jobs/{job.job_id}/cancel"
    async with serving(bus) as url:
        _, _, body = await http(url + "api/session")
        session = json.loads(body)
        assert session["allow_actions"] is False
        status, _, body = await http(url + cancel, "POST", {"x-csrf-token": session["csrf"]})
        assert status == 403 and b"read-only" in body
        status, _, _ = await http(url + f"api/workflows/{job.job_id}/cancel", "POST", {"x-csrf-token": session["csrf"]})
        assert status == 403
    async with serving(bus, UiSettings(port=0, allow_actions=True)) as url:
        _, _, body = await http(url + "api/session")
        session = json.loads(body)
        assert session["allow_actions"] is True
        status, _, body = await http(url + cancel, "POST")
        assert status == 403 and b"CSRF" in body
        status, _, _ = await http(url + cancel, "POST", {"x-csrf-token": "not-" + session["csrf"]})
        assert status == 403
        host = url.split("/")[2]
        status, _, body = await http(
            url + cancel, "POST", {"x-csrf-token": session["csrf"], "origin": "http://evil.example", "host": host}
        )
        assert status == 403 and b"cross-origin" in body
        status, _, body = await http(url + cancel, "POST", {"x-csrf-token": session["csrf"]})
        assert status == 200, body
        assert json.loads(body) == {"job_id": job.job_id, "cancel": "requested"}
        assert (await bus.status(job.job_id)).state is lb.JobState.COMPLETE  # an ended job stays as it ended


async def test_no_bus_credentials_reach_the_page_and_foreign_hosts_are_refused(bus: lb.Bus, tmp_path: Path) -> None:
    job = await bus.submit(lb.JobDefn.of(["true"], name="plain"))
    await bus.wait(job.job_id, timeout=60)
    secret_config = bus.config.model_copy(update={"password": "bus-password-123", "user": "bus-user"})
    assert secret_config.password is not None
    async with serving(bus) as url:
        port = url.rstrip("/").rsplit(":", 1)[1]
        status, _, _ = await http(url + "api/session", headers={"host": f"attacker.example:{port}"})
        assert status == 400  # DNS rebinding: a foreign name is refused
        status, _, _ = await http(f"http://localhost:{port}/api/session")
        assert status == 200  # what 'ssh -L' forwards
        pages = []
        for path in ["api/session", "api/workflows", f"api/jobs/{job.job_id}", "", "static/app.js"]:
            status, headers, body = await http(url + path)
            assert status == 200, path
            assert "script-src 'self'" in headers["content-security-policy"]
            pages.append(body.decode())
        text = "\n".join(pages)
        for server in bus.config.servers:
            assert server not in text
        assert "nats://" not in text


async def test_the_ui_command_prints_its_url_serves_and_stops_on_ctrl_c(bus_config: BusConfig, tmp_path: Path) -> None:
    argv = [*CLI, "--home", str(bus_config.home), "--url", ",".join(bus_config.servers), "ui", "--port", "0"]
    process = await anyio.open_process(argv, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        text = ""
        with anyio.fail_after(60):
            async for chunk in process.stderr:
                text += chunk.decode()
                if "\n" in text:
                    break
        found = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/) \(read-only\); Ctrl-C stops it", text)
        assert found, text
        status, _, body = await http(found[1] + "api/session")
        assert status == 200 and json.loads(body)["allow_actions"] is False
        # A browser is following the event stream: Ctrl-C still stops the dashboard, and ends the stream.
        host, port = found[1].split("/")[2].split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(f"GET /events?after=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            with anyio.fail_after(30):
                while b"retry:" not in head:
                    head += await stream.receive()
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                code = await process.wait()
                rest = b""
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    while True:
                        rest += await stream.receive()
        assert code == 130, text
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def _lines_until(stream: object, pattern: str, seconds: float = 60) -> tuple[re.Match[str], str]:
    text = ""
    with anyio.fail_after(seconds):
        async for chunk in stream:  # type: ignore[attr-defined]
            text += chunk.decode()
            found = re.search(pattern, text)
            if found:
                return found, text
    raise AssertionError(f"{pattern!r} never came: {text}")


async def test_a_port_in_use_is_one_line(bus_config: BusConfig) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [*CLI, "--home", str(bus_config.home), "--url", ",".join(bus_config.servers), "ui", "--port", str(port)]
        done = await anyio.run_process(argv, check=False)
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        f"lwfm-bus: error: cannot serve the dashboard on 127.0.0.1:{port}: Address already in use"
    ]


async def test_up_serves_the_dashboard_alongside(tmp_path: Path) -> None:
    argv = [*CLI, "--home", str(tmp_path / "home"), "up", "--ui", "--ui-port", "0", "--allow-actions"]
    process = await anyio.open_process(argv, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        # The dashboard listens first, then 'up' says it is up.
        pattern = r"(?s)dashboard at (http://127\.0\.0\.1:\d+/) \(actions allowed\).*lwfm-bus: up at "
        found, _ = await _lines_until(process.stderr, pattern)
        status, _, body = await http(found[1] + "api/session")
        assert status == 200 and json.loads(body)["allow_actions"] is True
        status, _, body = await http(found[1] + "api/workflows")
        assert status == 200 and json.loads(body) == {"workflows": []}
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await process.wait() == 130
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


def test_without_the_ui_extra_the_command_says_how_to_get_it(tmp_path: Path) -> None:
    # sys.modules[name] = None makes 'import name' fail, as if the extra were not installed.
    code = (
        "import sys; sys.modules['starlette'] = sys.modules['uvicorn'] = None\n"
        "from lwfm_bus._cli import main; sys.exit(main(['ui']))"
    )
    env = {**os.environ, "LWFM_BUS_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "lwfm-bus: error: the dashboard needs the 'ui' extra (starlette is missing): pip install 'lwfm-bus[ui]'"
    ]
