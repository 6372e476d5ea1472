"""The metrics options and ``--log-format json`` as a user runs them: real ``lwfm-bus`` processes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus._cli import main
from lwfm_bus._cli._logfmt import JsonFormatter

CLI = [sys.executable, "-m", "lwfm_bus"]
_KEYS = {"time", "level", "logger", "message"}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


_COMMANDS = {
    "engine": (["engine", "--name", "metered"], "engine metered ready", {"nats_connected", "engine_started"}),
    "agent": (["agent", "--site", "local"], "agent for local", {"nats_connected", "agents_started"}),
    "up": (["up"], "up at", {"nats_connected", "engine_started", "agents_started"}),
}


@pytest.mark.parametrize("name", sorted(_COMMANDS))
async def test_a_long_running_command_logs_json_lines_and_serves_its_metrics(
    name: str, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    command, ready, checks = _COMMANDS[name]
    # up serves its own server in a home of its own; the others reach the test's server.
    where = (
        ["--home", str(tmp_path / "up-home")]
        if name == "up"
        else ["--home", str(bus_config.home), "--url", bus_config.servers[0]]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--log-format", "json", "-v", *where, *command, "--metrics-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[dict[str, object]] = []

    async def until(needle: str) -> dict[str, object]:
        while raw := await proc.stderr.readline():  # type: ignore[union-attr]
            record: dict[str, object] = json.loads(raw)  # every line is one JSON object
            lines.append(record)
            if needle in str(record["message"]):
                return record
        raise AssertionError(f"stderr ended before {needle!r}: {lines}")

    try:
        serving = await asyncio.wait_for(until("metrics at "), 30)
        url = str(serving["message"]).split("metrics at ")[1].split()[0]
        base = url.removesuffix("metrics")
        await asyncio.wait_for(until(ready), 30)
        status, body = await asyncio.to_thread(_get, base + "readyz")
        assert status == 200, body
        assert json.loads(body)["checks"] == dict.fromkeys(checks, True)
        status, text = await asyncio.to_thread(_get, url)
        assert status == 200
        assert "lwfm_nats_connected 1.0" in text
        assert ("lwfm_engine_firings_total 0.0" in text) == ("engine_started" in checks)
        assert ('lwfm_submissions_queued{site="local"} 0.0' in text) == ("agents_started" in checks)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    lines.extend(json.loads(raw) for raw in rest.splitlines())  # what it said while stopping, too
    assert proc.returncode == 143
    assert all(set(line) >= _KEYS for line in lines), lines
    assert any(line["logger"] == "lwfm_bus.cli" and line["level"] == "INFO" for line in lines), lines
    if "engine_started" in checks:  # -v: the engine's own INFO lines are JSON too
        assert any(line["logger"] == "lwfm_bus.engine" and line["level"] == "INFO" for line in lines), lines


@pytest.mark.parametrize("command", [["engine"], ["agent", "--site", "local"], ["up"]])
def test_metrics_beyond_loopback_without_a_token_are_refused(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at this URL: the refusal must come before any connection is tried.
    argv = ["--home", str(tmp_path / "home"), "--url", "nats://127.0.0.1:9", *command]
    assert main([*argv, "--metrics-port", "0", "--metrics-host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve metrics on '0.0.0.0'" in err, err
    assert not (tmp_path / "home" / "server.json").exists()


def test_a_json_log_line_carries_the_traceback() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("lwfm_bus.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logger.exception("failed on\nline %d", 2)
    finally:
        logger.removeHandler(handler)
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "failed on\nline 2"
    assert (record["level"], record["logger"]) == ("ERROR", "lwfm_bus.test-json")
    assert "ZeroDivisionError" in str(record["exc_info"])
    assert str(record["time"]).endswith("+00:00")
