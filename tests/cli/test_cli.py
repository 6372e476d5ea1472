"""The command line as a user runs it: real processes, one server, one tail, one publisher."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import lwfm_bus as lb
from tests.samples import sample_events

CLI = [sys.executable, "-m", "lwfm_bus"]


async def _spawn(*args: str, home: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
    return await asyncio.create_subprocess_exec(
        *CLI,
        "--home",
        str(home),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _line_containing(stream: asyncio.StreamReader, needle: str, timeout: float = 20) -> str:
    async def scan() -> str:
        while line := (await stream.readline()).decode():
            if needle in line:
                return line
        raise AssertionError(f"stream ended before {needle!r}")

    return await asyncio.wait_for(scan(), timeout)


async def test_events_in_one_process_show_what_another_publishes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = await _spawn("server", home=home)
    try:
        assert server.stderr is not None
        ready = await _line_containing(server.stderr, "ready at")
        url = ready.split("ready at ")[1].split()[0]
        tail = await _spawn("events", "--json", home=home)  # finds the server through <home>
        try:
            assert tail.stderr is not None and tail.stdout is not None
            await _line_containing(tail.stderr, "listening on")
            events = sample_events()
            async with lb.connect(lb.BusConfig(home=home)) as bus:
                assert bus.connected_url == url
                for e in events:
                    await bus.publish(e)
            lines = [await asyncio.wait_for(tail.stdout.readline(), 20) for _ in events]
            assert [lb.decode_event(line) for line in lines] == events
        finally:
            tail.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(tail.wait(), 20) == 143
    finally:
        server.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(server.wait(), 20)
    assert rc == 130
    assert not (home / "server.json").exists(), "a stopped server leaves no advertisement behind"


async def test_schemas_check_passes_on_the_committed_tree(tmp_path: Path) -> None:
    proc = await _spawn("schemas", "--check", "--dir", str(Path(__file__).parents[2] / "schemas"), home=tmp_path)
    await proc.communicate()
    assert proc.returncode == 0
    stale = await _spawn("schemas", "--check", "--dir", str(tmp_path / "empty"), home=tmp_path)
    _, err = await stale.communicate()
    assert stale.returncode == 1
    assert b"stale" in err


async def test_demo_shows_the_events_it_published(tmp_path: Path) -> None:
    proc = await _spawn("demo", home=tmp_path / "home")
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    steps = [line.split() for line in lines[:3]]
    assert [(s[0], s[2], s[3]) for s in steps] == [(n, "COMPLETE", "exit=0") for n in "ABC"]
    assert lines[3].split()[0::2][:3] == ["Z", "COMPLETE", "joined"]
    assert "joined 2 parents" in lines[3]
    assert lines[4] == "workflow jobs:"
    assert sorted(lines[5:]) == sorted(f"  {n}  COMPLETE" for n in "ABCXYZ")


async def test_bad_arguments_are_one_clear_line(tmp_path: Path) -> None:
    proc = await _spawn("--site", "bad.site", "events", home=tmp_path)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"lwfm-bus: error:" in err
    assert b"Traceback" not in err


async def test_a_reader_that_stops_early_ends_the_command_quietly(bus_config: lb.BusConfig) -> None:
    """``lwfm-bus events ... | head -1``: no BrokenPipeError traceback, exit 0."""
    async with lb.connect(bus_config.model_copy(update={"agents": ()})) as bus:
        for event in sample_events() * 200:  # more history than one pipe buffer holds
            await bus.publish(event.model_copy(update={"id": lb.new_id()}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
    env["LWFM_BUS_URL"] = bus_config.servers[0]
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(bus_config.home), "events", "--all", "--no-follow",
        stdout=write_end, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = await asyncio.to_thread(reader.readline)  # then the reader goes away, as head does
    assert first.strip()
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr.decode()
    assert proc.returncode == 0
