"""Helpers shared by the site tests (local, SSH, Slurm): a sites file, waiting on job events.

Every wait is on an event from the bus (read from the start of the stream, so an event
that is already there counts), a FIFO a job writes, or a pidfd: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import nats.js.errors

import lwfm_bus as lb
from lwfm_bus import JobState


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_sites(path: Path, sites: Mapping[str, Mapping[str, object]]) -> Path:
    """A ``sites.toml`` with one ``[sites.NAME]`` table per entry."""
    lines: list[str] = []
    for name, options in sites.items():
        lines.append(f"[sites.{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in options.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


async def wait_state(
    bus: lb.Bus,
    job_id: str,
    state: JobState,
    timeout: float = 30,
    where: Callable[[lb.JobStatus], bool] = lambda _: True,
) -> lb.JobStatus:
    """The job's first event in ``state`` (for which ``where`` holds); fails at once if the job ends otherwise."""

    async def scan() -> lb.JobStatus:
        seen: list[str] = []
        async with bus.subscribe(lb.job_filter(job_id), from_start=True) as events:
            async for event in events:
                if not isinstance(event, lb.JobStatusEvent):
                    continue
                seen.append(
                    f"{event.data.state}({event.data.native_state}: {event.data.native_info or event.data.info})"
                )
                if event.data.state is state and where(event.data):
                    return event.data
                if event.data.state.is_terminal:
                    raise AssertionError(f"job {job_id} ended {event.data} before reaching {state}; saw {seen}")
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def wait_info(bus: lb.Bus, job_id: str, contains: str, timeout: float = 30) -> lb.JobStatus:
    """The job's first INFO event whose text contains ``contains``."""

    async def scan() -> lb.JobStatus:
        async with bus.subscribe(lb.job_filter(job_id), from_start=True) as events:
            async for event in events:
                if not isinstance(event, lb.JobStatusEvent):
                    continue
                if event.data.state is JobState.INFO and contains in (event.data.info or ""):
                    return event.data
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def job_events(bus: lb.Bus, job_id: str) -> list[lb.JobStatus]:
    async with bus.replay(lb.job_filter(job_id)) as history:
        return [e.data async for e in history if isinstance(e, lb.JobStatusEvent)]


async def read_fifo_line(fd: int, timeout: float = 30) -> str:
    """One line from a FIFO whose read end ``fd`` is open non-blocking; woken when a job writes it."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    buf = bytearray()
    loop.add_reader(fd, ready.set)

    async def collect() -> None:
        while b"\n" not in buf:
            await ready.wait()
            ready.clear()
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                raise AssertionError(f"the writer closed the FIFO after {bytes(buf)!r} without a full line")
            buf.extend(chunk)

    try:
        await asyncio.wait_for(collect(), timeout)
    finally:
        loop.remove_reader(fd)
    return buf.decode().strip()


async def wait_pid_exit(pid: int, timeout: float = 30) -> None:
    """Until process ``pid`` has exited (the kernel makes its pidfd readable), or is a zombie already."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(gone, timeout)
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def is_gone(pid: int) -> bool:
    """No such process, or a zombie (pid 1 here may never reap re-parented processes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def kill_processes_with(marker: str) -> None:
    """SIGKILL every process (but this one) whose environment contains ``marker`` (``KEY=value``)."""
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


async def site_health(bus: lb.Bus, site: str, status: lb.SiteStatus, timeout: float = 60) -> lb.SiteHeartbeatEvent:
    """The first heartbeat of ``site`` with ``status`` (its agent publishes each change of health)."""

    async def scan() -> lb.SiteHeartbeatEvent:
        async with bus.subscribe(f"lwfm.{site}.site.*.*.heartbeat", from_start=True) as beats:
            async for event in beats:
                if isinstance(event, lb.SiteHeartbeatEvent) and event.data.status is status:
                    return event
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def site_health_changes(bus: lb.Bus, site: str) -> list[lb.SiteStatus]:
    """Every health ``site``'s agents have published, in order."""
    async with bus.replay(f"lwfm.{site}.site.*.*.heartbeat") as history:
        return [e.data.status async for e in history if isinstance(e, lb.SiteHeartbeatEvent)]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without any LWFM_* setting, plus ``extra``: a CLI subprocess
    then uses only what its command line says (the test's bus, not the developer's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_")}
    env.update(extra)
    return env


async def run_cli(config: lb.BusConfig, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    """``python -m lwfm_bus --home H --url U ARGS...`` against the test's bus: (exit code, stdout, stderr)."""
    env = cli_env()
    if config.sites_file is not None:
        env["LWFM_BUS_SITES"] = str(config.sites_file)
    cli = [sys.executable, "-m", "lwfm_bus", "--home", str(config.home), "--url", config.servers[0]]
    proc = await asyncio.create_subprocess_exec(
        *cli, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def engine_idle(bus: lb.Bus, timeout: float = 30) -> None:
    """Until the engines' shared consumer has nothing pending or unacked.

    An event is acked only after its handler (counters included) has finished, so after
    this every event published so far has been judged and ``engine.stats`` is final.
    Each check is one server round trip; nothing sleeps.
    """

    async def drained() -> None:
        while True:
            info = await bus.jetstream.consumer_info("LWFM", "lwfm-engine")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return

    await asyncio.wait_for(drained(), timeout)


async def raw_stream(bus: lb.Bus, stream: str) -> list[bytes]:
    """Every message the stream holds, as stored (subject, headers and data): what a scan for a leak reads."""
    info = await bus.jetstream.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.jetstream.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        out.append((msg.subject or "").encode() + repr(msg.headers).encode() + (msg.data or b""))
    return out


def write_wheel(directory: Path, package: str, version: str, generator: str = "lwfm-bus-tests") -> Path:
    """A minimal pure-Python wheel of ``package``: a module, METADATA, WHEEL and a RECORD with real hashes.

    What the environment tests and the environment bench install: no index, no network.
    """
    dist = f"{package}-{version}.dist-info"
    files = {
        f"{package}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: {generator}\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    return path
