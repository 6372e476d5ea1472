"""Shared pieces of the performance suite: the figure record, a server per benchmark,
an engine whose event handling can be timed from outside, bulk publishing, a site
agent in a process of its own, an agent that only answers pings, and a FIFO that jobs
signal their start through.

Benchmarks reach into a few private engine attributes (``_handle``, ``_catch_up``,
``_remember``) because the engine has no timing hooks of its own; that coupling is
kept here, in one place, so a change in the engine breaks one file.  The agent's ping
subject comes from ``lwfm_bus._subjects`` (imported, never patched).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import anyio
from nats.aio.msg import Msg

import lwfm_bus as lb
from lwfm_bus._bus._eventbus import STREAM
from lwfm_bus._subjects import agent_subject
from lwfm_bus.testing import bus_config_for, start_test_server

Status = Literal["met", "MISSED", "info", "quick", "timeout", "error", "n/a", "skipped"]


class Figure(TypedDict):
    """One line of the table; every number is also kept raw for the JSON."""

    item: str
    name: str
    value: float | None
    unit: str
    target: str
    """Human-readable, e.g. ``<= 5 ms`` or ``ratio >= 0.6``; empty when the figure has none."""
    target_on: Literal["value", "ratio", ""]
    target_op: Literal["<=", ">=", ""]
    target_limit: float | None
    baseline: float | None
    baseline_unit: str
    """The baseline's unit, when it is not the figure's (a rate of something else)."""
    baseline_label: str
    ratio: float | None
    ratio_label: str
    status: Status
    note: str


def figure(
    item: str,
    name: str,
    value: float | None,
    unit: str,
    *,
    target: tuple[Literal["value", "ratio"], Literal["<=", ">="], float] | None = None,
    baseline: float | None = None,
    baseline_unit: str | None = None,
    baseline_label: str = "",
    ratio: float | None = None,
    ratio_label: str = "",
    note: str = "",
    quick: bool = False,
) -> Figure:
    """A figure, judged against its target unless this is a quick run (which judges nothing)."""
    on: Literal["value", "ratio", ""] = ""
    op: Literal["<=", ">=", ""] = ""
    limit: float | None = None
    if target is not None:
        on, op, limit = target
    shown = ""
    if limit is not None:
        shown = f"{op} {_fmt(limit, unit)}" if on == "value" else f"ratio {op} {limit:g}"
    fig = Figure(
        item=item, name=name, value=value, unit=unit, target=shown, target_on=on, target_op=op, target_limit=limit,
        baseline=baseline, baseline_unit=unit if baseline_unit is None else baseline_unit,
        baseline_label=baseline_label, ratio=ratio, ratio_label=ratio_label, status="info",
        note=note,
    )  # fmt: skip
    fig["status"] = judge(fig, quick)
    return fig


def judge(fig: Figure, quick: bool) -> Status:
    if fig["target_limit"] is None:
        return "info"
    if quick:
        return "quick"
    seen = fig["value"] if fig["target_on"] == "value" else fig["ratio"]
    if seen is None or math.isnan(seen):
        return "n/a"
    ok = seen <= fig["target_limit"] if fig["target_op"] == "<=" else seen >= fig["target_limit"]
    return "met" if ok else "MISSED"


def _fmt(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:g} {unit}"


def not_available(
    item: str, name: str, why: str, target: tuple[Literal["value", "ratio"], Literal["<=", ">="], float] | None = None
) -> Figure:
    """A figure the suite cannot measure (yet): reported, never a crash."""
    fig = figure(item, name, None, "ms", target=target, note=why)
    fig["status"] = "n/a"
    return fig


# --------------------------------------------------------------------------- statistics and processes

_T0 = time.perf_counter()


def log(text: str) -> None:
    """Progress on stderr (the suite keeps it in the benchmark's log, shown when it fails)."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {text}", file=sys.stderr, flush=True)


def scaled(seconds: float) -> float:
    """A benchmark's own time limit, stretched under a profiler (``BENCH_TIME_SCALE``, set by the suite)."""
    return seconds * float(os.environ.get("BENCH_TIME_SCALE", "1"))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values: an observed sample, never interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (default: this one), from /proc."""
    pages = int(Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time a process has used so far, from /proc (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reaped_children_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the children another process has reaped so far (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


@dataclass
class CpuMeter:
    """CPU used over a window by this process, by the nats-server, and by the children this
    process reaped meanwhile (jobs): tells whether a figure is limited by the Python side,
    by the server, by the jobs' own processes, or by none (each waiting on another)."""

    server_pid: int | None
    _t0: float = 0.0
    _self0: float = 0.0
    _server0: float = 0.0
    _children0: float = 0.0

    def start(self) -> None:
        self._t0, self._self0, self._server0 = time.perf_counter(), cpu_seconds(), cpu_seconds(self.server_pid)
        self._children0 = _children_cpu()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        me, server = cpu_seconds() - self._self0, cpu_seconds(self.server_pid) - self._server0
        children = _children_cpu() - self._children0
        return {
            "wall_s": round(wall, 3),
            "bench_process_cpu_s": round(me, 2),
            "server_cpu_s": round(server, 2),
            "reaped_children_cpu_s": round(children, 2),
            "bench_process_cpu_share": round(me / wall, 2) if wall else math.nan,
            "server_cpu_share": round(server / wall, 2) if wall else math.nan,
            "reaped_children_cpu_share": round(children / wall, 2) if wall else math.nan,
        }


def profiler_binary() -> str | None:
    """py-spy, if there is one (``PY_SPY``, else on PATH)."""
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


class WindowProfile:
    """A profile of a benchmark's timed window only, when ``BENCH_PROFILE_WINDOW`` names a
    path prefix (``python -m bench --profile DIR`` sets it): a whole-process profile would
    be dominated by setup.

    py-spy (``PY_SPY``, else on PATH) attached to this process for the window: a sampling
    profiler, so the window runs at nearly its normal speed, and it sees C code, threads
    and the event loop alike; written to ``<prefix>.<tag>.pyspy.txt``.  Without py-spy,
    cProfile (slower, and blind to other threads), to ``<prefix>.<tag>.prof``.

    ``pid``: py-spy attaches to that process instead (an agent in a process of its
    own); without py-spy such a process profiles itself (:func:`agent_process`).
    """

    def __init__(self, pid: int | None = None) -> None:
        self._prefix = os.environ.get("BENCH_PROFILE_WINDOW")
        self._spy_bin = profiler_binary()
        self._pid = pid
        self._profile: cProfile.Profile | None = None
        self._spy: subprocess.Popen[bytes] | None = None
        self._spy_out = ""

    def start(self) -> None:
        if not self._prefix or self._profile is not None or self._spy is not None:
            return
        pid = self._pid or os.getpid()
        if self._spy_bin:
            self._spy_out = f"{self._prefix}.window-{pid}.pyspy.txt"
            self._spy = subprocess.Popen(
                [self._spy_bin, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                 "-o", self._spy_out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        elif self._pid is None or self._pid == os.getpid():
            self._profile = cProfile.Profile()
            self._profile.enable()

    def discard(self) -> None:
        """A window left open (its benchmark failed or never closed it): stop, keep nothing."""
        if self._spy is not None or self._profile is not None:
            self.stop("discarded")
            with contextlib.suppress(OSError):
                for suffix in (".pyspy.txt", ".prof"):
                    Path(f"{self._prefix}.discarded{suffix}").unlink(missing_ok=True)

    def stop(self, tag: str) -> None:
        if self._spy is not None:
            self._spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            try:
                self._spy.wait(60)
            except subprocess.TimeoutExpired:
                self._spy.kill()
                self._spy.wait()
            with contextlib.suppress(OSError):
                os.replace(self._spy_out, f"{self._prefix}.{tag}.pyspy.txt")
            self._spy = None
        if self._profile is not None:
            self._profile.disable()
            self._profile.dump_stats(f"{self._prefix}.{tag}.prof")
            self._profile = None


# --------------------------------------------------------------------------- a bus per benchmark


@contextlib.asynccontextmanager
async def bench_bus(
    tmp: Path, name: str = "lwfm-bench", **overrides: object
) -> AsyncIterator[tuple[lb.EmbeddedServer, lb.Bus]]:
    """A fresh nats-server on a free loopback port (store under ``tmp``) and a bus on it.

    The bus reaches the server as an external deployment, so it runs no engine of its
    own: each benchmark decides where its engine runs.  It runs the ``local`` site's
    agent (:func:`lwfm_bus.testing.bus_config_for`), unless ``overrides`` say otherwise
    (``agents=()``: a pure client; ``sites_file=...``).
    """
    async with start_test_server(tmp / "nats") as server:
        config = bus_config_for(server, tmp / "home", **overrides)
        async with lb.connect(config, name=name) as bus:
            yield server, bus


async def bulk_publish(bus: lb.Bus, events: Iterable[lb.Event], window: int = 2_000) -> tuple[int, int]:
    """Publish many events fast (setup only): pipelined, ``window`` awaiting their acks at once.

    ``bus.publish`` waits for each ack; setup of 100 k registrations that way would
    take longer than the benchmark it prepares.  Every ack is still checked.  Returns
    the stream sequences of the first and the last event.
    """
    js = bus.jetstream
    pending: list[asyncio.Future[Any]] = []
    seqs: list[int] = []

    async def settle() -> None:
        acks = await asyncio.gather(*pending)
        seqs.extend(int(a.seq) for a in acks[:: max(1, len(acks) - 1)])
        pending.clear()

    for event in events:
        payload = lb.encode_event(event, bus.config.max_event_bytes)
        pending.append(
            await js.publish_async(event.nats_subject(), payload, headers={"Nats-Msg-Id": event.id}, stream=STREAM)
        )
        if len(pending) >= window:
            await settle()
    if pending:
        await settle()
    return (min(seqs), max(seqs)) if seqs else (0, 0)


def registration(trigger: lb.Trigger, site: str = "local") -> lb.Event:
    """The event ``bus.add_trigger`` publishes, built here so it can be bulk-published."""
    data = lb.TriggerRegistered(
        trigger_id=trigger.trigger_id, site=site, workflow_id=trigger.workflow_id, definition=trigger
    )
    return lb.make_event(data, source=f"/sites/{site}/bench", id=f"registered:{trigger.trigger_id}")


_TRUE = lb.JobDefn.of(["true"])


def mixed_trigger(i: int, site: str = "local") -> lb.Trigger:
    """Trigger ``i`` of the mix the matching benchmark uses: even ones wait for job ``job<i>``
    to complete, odd ones for data with ``sample == s<i>`` and ``step >= 3``."""
    down = lb.Downstream(job=_TRUE, site=site)
    if i % 2 == 0:
        return lb.JobTrigger(trigger_id=f"t{i}", upstream=lb.Upstream(job_id=f"job{i}"), downstream=down)
    return lb.DataTrigger(
        trigger_id=f"t{i}",
        signature={"sample": lb.Eq(value=f"s{i}"), "step": lb.Range(ge=3)},
        downstream=down,
        existing="ignore",
    )


# --------------------------------------------------------------------------- an engine timed from outside


class HandleProbe:
    """Wraps one engine's per-message handler to count and time what it has finished.

    ``measured(subject)`` picks the messages whose window is timed (from the start of the
    first to the end of the last); every message is counted in ``done``.  CPU use (and
    a profile, if asked for) starts with the window: :meth:`close_window` as soon as it
    is over.
    """

    def __init__(
        self, engine: lb.Engine, measured: Callable[[str], bool] | None = None, server_pid: int | None = None
    ) -> None:
        self.done = 0
        self.startup_s = math.nan
        """Seconds the engine took to start (set by :func:`probed_engine`): its index rebuild."""
        self.measured_done = 0
        self.first_start: float | None = None
        self.last_end = 0.0
        self._measured = measured or (lambda _subject: True)
        self._moved = asyncio.Condition()
        self.cpu = CpuMeter(server_pid)
        self.profile = WindowProfile()
        engine.observe(self._observed)

    async def _observed(self, subject: str, done: bool) -> None:
        timed = self._measured(subject)
        if not done:
            if timed and self.first_start is None:
                self.first_start = time.perf_counter()
                self.cpu.start()
                self.profile.start()
            return
        self.done += 1
        if timed:
            self.measured_done += 1
            self.last_end = time.perf_counter()
        async with self._moved:
            self._moved.notify_all()

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait (at most ``timeout`` s, then ``TimeoutError``) until ``condition`` holds."""
        async with asyncio.timeout(timeout), self._moved:
            await self._moved.wait_for(condition)

    def close_window(self, tag: str) -> dict[str, float]:
        """CPU used over the window (this process, the server); stops the window's profile."""
        self.profile.stop(tag)
        return self.cpu.stop()

    def window_rate(self) -> float:
        """Measured messages per second over their window."""
        if self.first_start is None or self.measured_done == 0:
            return math.nan
        return self.measured_done / max(1e-9, self.last_end - self.first_start)


def skip_history_lookup(engine: lb.Engine) -> None:
    """Setup only: registrations skip the "condition already holds" look-back.

    For each upstream of a job trigger the engine asks the server for the first event
    of each of seven states before the registration; with no history that finds
    nothing and costs ~1 ms per registration, so 100 k registrations would take
    minutes.  The definition is still remembered, as the engine does.  Undo with
    :func:`restore_history_lookup` (benchmarks call it before their timed phase).
    """
    engine.look_back = False


def restore_history_lookup(engine: lb.Engine) -> None:
    engine.look_back = True


@contextlib.asynccontextmanager
async def probed_engine(
    bus: lb.Bus,
    config: lb.EngineConfig | None = None,
    *,
    measured: Callable[[str], bool] | None = None,
    fast_registration: bool = False,
    server_pid: int | None = None,
) -> AsyncIterator[tuple[lb.Engine, HandleProbe]]:
    """Like :func:`lwfm_bus.serve_engine`, with the probe in place before the first message."""
    engine = lb.Engine(bus, config)
    probe = HandleProbe(engine, measured, server_pid)
    if fast_registration:
        skip_history_lookup(engine)
    async with anyio.create_task_group() as tg:
        t0 = time.perf_counter()
        await tg.start(engine.run)
        probe.startup_s = time.perf_counter() - t0
        try:
            yield engine, probe
        finally:
            probe.profile.discard()
            tg.cancel_scope.cancel()


def is_trigger_event(subject: str) -> bool:
    return ".trigger." in subject


# --------------------------------------------------------------------------- agents and job start signals


def write_sites_file(path: Path, max_concurrent: int, site: str = "local") -> Path:
    """A sites file giving ``site`` (a local site) ``max_concurrent``; every process of a benchmark reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[sites.{site}]\nmax_concurrent = {int(max_concurrent)}\n")
    return path


@dataclass
class AgentProcess:
    """A ``lwfm-bus agent`` process: its pid and the last lines it wrote on stderr."""

    pid: int
    stderr_tail: deque[str]

    def tail(self) -> str:
        return "\n".join(self.stderr_tail)


@contextlib.asynccontextmanager
async def agent_process(
    url: str, home: Path, *, site: str = "local", sites_file: Path | None = None, timeout: float = 30.0
) -> AsyncIterator[AgentProcess]:
    """``lwfm-bus agent --site SITE`` in a process of its own, as a user starts one, for the block.

    Entered once it says it serves the site ("agent for SITE at ...", on stderr);
    stopped with SIGTERM (it hands held submissions back and exits), SIGKILL if it
    has not exited 20 s later.  Under ``--profile`` without py-spy it runs under
    cProfile, written to ``<prefix>.agent-process-<site>.prof`` when it exits.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
    env.update(LWFM_BUS_URL=url, LWFM_BUS_AUTOSTART="off", LWFM_BUS_ENGINE="off")
    if sites_file is not None:
        env["LWFM_BUS_SITES"] = str(sites_file)
    cmd = [sys.executable]
    prefix = os.environ.get("BENCH_PROFILE_WINDOW")
    if prefix and not profiler_binary():
        cmd += ["-m", "cProfile", "-o", f"{prefix}.agent-process-{site}.prof"]
    cmd += ["-m", "lwfm_bus", "--home", str(home), "agent", "--site", site]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    agent = AgentProcess(proc.pid, deque(maxlen=40))
    ready = asyncio.Event()

    async def drain() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:  # ends when the process closes stderr (it exits)
            text = line.decode(errors="replace").rstrip()
            agent.stderr_tail.append(text)
            if f"agent for {site} at" in text:
                ready.set()

    drainer = asyncio.create_task(drain())
    try:
        readiness = asyncio.create_task(ready.wait())
        try:
            await asyncio.wait({readiness, drainer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            readiness.cancel()
        if not ready.is_set():
            why = "exited" if drainer.done() else f"was not ready within {timeout:.0f} s"
            raise RuntimeError(f"the agent process for site {site!r} {why}:\n{agent.tail()}")
        yield agent
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await drainer
        drainer.cancel()


@contextlib.asynccontextmanager
async def ping_only_agent(bus: lb.Bus, site: str) -> AsyncIterator[None]:
    """Something that answers "is an agent of ``site`` there?" as an agent does, and takes no submission.

    To a submitter the site is served (PENDING "queued"); no consumer takes the stored
    submissions, so no job and no agent share the machine with what is timed.
    """

    async def answer(msg: Msg) -> None:
        await msg.respond(b"bench-ping-only")

    sub = await bus.nats.subscribe(agent_subject(site, "ping"), queue=f"lwfm-agent-{site}", cb=answer)
    try:
        yield
    finally:
        await sub.unsubscribe()


class StartSignals:
    """A FIFO that a job writes one byte to as it starts: the instant this process reads it is "started".

    Opened read-write and non-blocking here, so a writer never blocks on opening it and
    the loop is woken (``add_reader``) by the byte itself, not by polling.  One job at
    a time: :meth:`arm` before starting it, then await the future it returns (the
    ``perf_counter`` when the byte was read).  A byte with nothing armed is counted
    in ``stray``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stray = 0
        self._fd = -1
        self._armed: asyncio.Future[float] | None = None

    def command(self) -> tuple[str, ...]:
        """The job: a shell that writes one byte to the FIFO and exits."""
        return ("/bin/sh", "-c", 'printf x > "$1"', "bench-started", str(self.path))

    def __enter__(self) -> StartSignals:
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._fd, self._read)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def _read(self) -> None:
        now = time.perf_counter()
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        for _ in data:
            fut, self._armed = self._armed, None
            if fut is None or fut.done():
                self.stray += 1
            else:
                fut.set_result(now)

    def arm(self) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._armed = fut
        return fut
