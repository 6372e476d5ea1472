"""Trigger engines as real processes: crashes, SIGKILL, two replicas, restarts.

Every engine here is ``lwfm-bus engine`` in its own process, on a real nats-server,
sharing the durable consumer ``lwfm-engine`` and the claims bucket.  Every downstream
job appends one line to its own file, so the file says how many times it really ran.

Synchronisation is always on something that happens: the engine's "ready" line, a
process exit, a job or trigger event on the bus, a firing record settling in the
key-value store (a watch, woken by the server), or an engine's ack of an upstream event
heard on the wire (the point after which no replica acts on it again).  Nothing here
sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.msg import Msg

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._eventbus import STREAM
from lwfm_bus._engine._replica import DURABLE
from lwfm_bus._engine._store import FIRINGS_BUCKET, EngineStore, FiringRecord, FiringState
from lwfm_bus.testing import hold_connection
from tests._helpers import cli_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and process groups")

_READY = re.compile(r"lwfm-bus: engine (\S+) ready \((\d+) triggers indexed\)")
_APPEND = "import sys; open(sys.argv[1], 'a').write('ran\\n')"


# --------------------------------------------------------------------- helpers


@pytest_asyncio.fixture
async def client(bus_config: lb.BusConfig) -> AsyncIterator[lb.Bus]:
    """The test's own connection; it never judges triggers (only the engine processes do)."""
    async with hold_connection(bus_config.model_copy(update={"engine": "off"})) as bus:
        assert not bus.serves_embedded
        yield bus


def _counting_job(counter: Path) -> lb.JobDefn:
    """A job that appends one line to ``counter`` each time it really runs."""
    return lb.JobDefn.of([sys.executable, "-c", _APPEND, str(counter)])


def _runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


async def _complete(bus: lb.Bus, job_id: str) -> int:
    """Publish a synthetic COMPLETE of an upstream job (the id a real adapter would give it); its sequence."""
    status = lb.JobStatus(job_id=job_id, site="local", state=JobState.COMPLETE)
    ack = await bus.publish(lb.make_event(status, source="/test", id=f"{job_id}:COMPLETE"))
    assert not ack.duplicate
    return ack.seq


class _Acks:
    """The engines' acks of their shared consumer, seen on the wire.

    An engine acks a message only once everything it caused is durable (fired, submitted,
    settled); an ack is a core NATS publish (empty, or ``+ACK``) to the message's reply subject
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``, which the test can hear too.
    So "the upstream event at seq s was acked" means no replica will act on it again.
    """

    def __init__(self) -> None:
        self.acked: dict[int, int] = {}  # stream seq -> delivery count of the ack
        self._changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        for i in range(len(tokens) - 3):
            if tokens[i] == STREAM and tokens[i + 1] == DURABLE:
                if msg.data in (b"", b"+ACK") or msg.data.startswith(b"+TERM"):  # not -NAK, +WPI
                    self.acked[int(tokens[i + 3])] = int(tokens[i + 2])
                    self._changed.set()
                return

    async def wait(self, seqs: Iterable[int], timeout: float = 30) -> None:
        wanted = set(seqs)

        async def until() -> None:
            while not wanted <= self.acked.keys():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            missing = sorted(wanted - self.acked.keys())
            raise AssertionError(f"events {missing[:10]} were not acked within {timeout}s") from None


@contextlib.asynccontextmanager
async def _acks(bus: lb.Bus) -> AsyncIterator[_Acks]:
    acks = _Acks()
    sub = await bus.nats.subscribe("$JS.ACK.>", cb=acks.on_msg)
    await bus.nats.flush()  # the server has the subscription before any engine starts
    try:
        yield acks
    finally:
        await sub.unsubscribe()


class _Engine:
    """One ``lwfm-bus engine`` process; its stderr is kept (and drained, so it never blocks)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.indexed: int | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def ready(self, timeout: float = 30) -> None:
        """Until the process says it is ready (it fails the test if it exits first)."""
        assert self.proc.stderr is not None

        async def read() -> None:
            assert self.proc.stderr is not None
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"the engine exited before it was ready:\n{self.log}")
                line = raw.decode(errors="replace")
                self.lines.append(line)
                found = _READY.search(line)
                if found:
                    self.indexed = int(found.group(2))
                    return

        await asyncio.wait_for(read(), timeout)
        self._drain = asyncio.get_running_loop().create_task(self._keep_reading())

    async def _keep_reading(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode(errors="replace"))

    async def exited(self, timeout: float = 30) -> int:
        """The exit status, once the process has ended (woken by the child watcher)."""
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the engine did not exit within {timeout}s:\n{self.log}") from None
        if self._drain is not None:
            await asyncio.wait_for(self._drain, timeout)  # EOF follows the exit: the log is complete
        return rc

    async def stop(self) -> None:
        """SIGKILL if still running, reap, stop reading; never raises."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain


@contextlib.asynccontextmanager
async def _engines(bus_config: lb.BusConfig) -> AsyncIterator[_EngineStarter]:
    """Starts engine processes; every one still running at the end is killed and reaped."""
    starter = _EngineStarter(bus_config)
    try:
        yield starter
    finally:
        for engine in starter.started:
            await engine.stop()


class _EngineStarter:
    def __init__(self, bus_config: lb.BusConfig) -> None:
        self._config = bus_config
        self.started: list[_Engine] = []

    async def start(self, *extra: str, ready: bool = True) -> _Engine:
        env = cli_env()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lwfm_bus",
            "--url",
            self._config.servers[0],
            "--home",
            str(self._config.home),
            "-v",
            "engine",
            "--ack-wait",
            "1",
            *extra,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        engine = _Engine(proc)
        self.started.append(engine)
        if ready:
            await engine.ready()
        return engine


async def _settled(bus: lb.Bus, trigger_ids: Iterable[str], timeout: float = 30) -> dict[str, FiringRecord]:
    """Each trigger's firing record once it left ``claimed`` (a KV watch: the server wakes us).

    A settled record means the engine finished the whole protocol for that firing and
    acked its message: nothing more will happen for it, so counts taken after are final.
    """
    kv = await bus.jetstream.key_value(FIRINGS_BUCKET)
    wanted = {EngineStore.firing_kv_key(tid): tid for tid in trigger_ids}
    done: dict[str, FiringRecord] = {}
    watcher = await kv.watchall()

    async def until_all() -> None:
        async for entry in watcher:
            if entry is None or entry.value is None or entry.key not in wanted:
                continue
            record = FiringRecord.model_validate_json(entry.value)
            if record.state is not FiringState.CLAIMED:
                done[wanted[entry.key]] = record
                if len(done) == len(wanted):
                    return

    try:
        await asyncio.wait_for(until_all(), timeout)
    except TimeoutError:
        missing = sorted(set(wanted.values()) - set(done))
        raise AssertionError(f"{len(missing)} firings not settled within {timeout}s: {missing[:5]}") from None
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
    return done


async def _fired_counts(bus: lb.Bus, trigger_id: str = "*") -> Counter[str]:
    """How many TriggerFiredEvents the stream holds, per trigger."""
    async with bus.replay(f"lwfm.*.trigger.*.{trigger_id}.*") as history:
        return Counter([e.data.trigger_id async for e in history if isinstance(e, lb.TriggerFiredEvent)])


async def _wait_all(bus: lb.Bus, job_ids: Iterable[str], timeout: float = 60) -> list[lb.JobStatus]:
    return list(await asyncio.gather(*(bus.wait(j, timeout=timeout) for j in job_ids)))


async def _assert_each_ran_once(bus: lb.Bus, chains: list[_Chain], engines: list[_Engine]) -> None:
    """Every downstream ran exactly once; if not, say what the bus and the engines saw."""
    wrong = [c for c in chains if _runs(c.counter) != 1]
    if not wrong:
        return
    report = []
    for c in wrong:
        async with bus.replay(lb.job_filter(c.b)) as history:
            states = [
                (e.source, e.data.state.value, e.data.native_id)
                async for e in history
                if isinstance(e, lb.JobStatusEvent)
            ]
        report.append(f"job {c.b} ran {_runs(c.counter)} times; its events: {states}")
    logs = "\n".join(f"--- engine {n}:\n{e.log}" for n, e in enumerate(engines))
    raise AssertionError("\n".join(report) + "\n" + logs)


class _Chain:
    """B after A, with B's job id fixed and a counter file for B."""

    def __init__(self, tmp_path: Path, n: int = 0) -> None:
        self.a, self.b, self.tid = lb.new_id(), lb.new_id(), lb.new_id()
        self.counter = tmp_path / f"runs-{n}"

    async def register(self, bus: lb.Bus) -> None:
        await bus.set_job_trigger(_counting_job(self.counter), self.a, job_id=self.b, trigger_id=self.tid)


# --------------------------------------------------------------------- 1. crash at each point of the protocol

_POINTS = ["after-claim", "after-submit", "after-fired"]


async def _crash_then_restart(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path, point: str, *, settled: bool = False
) -> _Chain:
    """B after A; an engine dies at ``point`` judging A's COMPLETE; a fresh engine takes over.

    Returns once B is COMPLETE and the fresh engine has acked A's (redelivered) event.
    """
    chain = _Chain(tmp_path)
    await chain.register(client)
    async with _acks(client) as acks, _engines(bus_config) as engines:
        crashing = await engines.start("--crash-at", point)
        assert crashing.indexed == 1
        a_seq = await _complete(client, chain.a)
        rc = await crashing.exited(timeout=30)
        assert rc == -signal.SIGKILL, crashing.log
        assert f"crash point {point} reached" in crashing.log
        assert a_seq not in acks.acked

        await engines.start()
        status = await client.wait(chain.b, timeout=60)
        assert status.state is JobState.COMPLETE, status
        assert status.parent_ids == (chain.a,)
        await acks.wait([a_seq])
        assert acks.acked[a_seq] >= 2, "A's event was acked on its redelivery"
        if settled:
            await _settled(client, [chain.tid])  # while the fresh engine still runs
    return chain


@pytest.mark.parametrize("point", _POINTS)
async def test_engine_crash_at_a_protocol_point_fires_once_after_restart(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path, point: str
) -> None:
    chain = await _crash_then_restart(client, bus_config, tmp_path, point)
    assert _runs(chain.counter) == 1
    assert await _fired_counts(client, chain.tid) == {chain.tid: 1}
    trigger = await client.trigger(chain.tid)
    assert trigger is not None
    assert (trigger.state, trigger.fired, trigger.last_job_id) == ("fired", 1, chain.b)
    terminal = [s for s in await _job_states(client, chain.b) if s.is_terminal]
    assert terminal == [JobState.COMPLETE]


@pytest.mark.parametrize(
    "point",
    [
        "after-claim",
        "after-submit",
        "after-fired",
    ],
)
async def test_the_next_engine_finishes_a_dead_engines_claim(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path, point: str
) -> None:
    chain = await _crash_then_restart(client, bus_config, tmp_path, point, settled=True)
    record = await _firing(client, chain.tid)
    assert record is not None
    assert (record.state, record.job_id, record.parent_ids) == (FiringState.DONE, chain.b, (chain.a,))


async def _firing(bus: lb.Bus, trigger_id: str) -> FiringRecord | None:
    kv = await bus.jetstream.key_value(FIRINGS_BUCKET)
    entry = await kv.get(EngineStore.firing_kv_key(trigger_id))
    return FiringRecord.model_validate_json(entry.value) if entry.value else None


async def _job_states(bus: lb.Bus, job_id: str) -> list[JobState]:
    async with bus.replay(lb.job_filter(job_id)) as history:
        return [e.data.state async for e in history if isinstance(e, lb.JobStatusEvent)]


# --------------------------------------------------------------------- 2. SIGKILL from outside, mid-flight


# A kill between a job's fork and its pid file once made the next engine start it again;
# the wrapper now records its own pid first (see the test at the end of this file).
async def test_engine_killed_mid_flight_every_downstream_runs_once(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    chains = [_Chain(tmp_path, n) for n in range(30)]
    await asyncio.gather(*(c.register(client) for c in chains))
    async with _acks(client) as acks, _engines(bus_config) as engines:
        # One event at a time: a firing is one stored submission now, quick enough that 30 at
        # once were all done before the kill landed (the check below said "nothing was tested").
        first = await engines.start("--max-inflight", "1")
        assert first.indexed == 30
        async with client.subscribe("lwfm.*.trigger.*.*.fired") as fired:
            a_seqs = await asyncio.gather(*(_complete(client, c.a) for c in chains))

            async def first_fired() -> lb.Event:
                async for event in fired:
                    if isinstance(event, lb.TriggerFiredEvent):
                        return event
                raise AssertionError("a followed subscription ended")  # pragma: no cover

            await asyncio.wait_for(first_fired(), 30)
            first.proc.kill()
        assert await first.exited() == -signal.SIGKILL
        assert len(acks.acked.keys() & set(a_seqs)) < 30, "the kill came after all the work: nothing was tested"

        await engines.start()
        statuses = await _wait_all(client, [c.b for c in chains])
        assert [s.state for s in statuses] == [JobState.COMPLETE] * 30
        await acks.wait(a_seqs)  # every upstream event handled to the end by one engine or the other

    await _assert_each_ran_once(client, chains, engines.started)
    assert await _fired_counts(client) == {c.tid: 1 for c in chains}
    for c in chains:
        trigger = await client.trigger(c.tid)
        assert trigger is not None and (trigger.state, trigger.fired) == ("fired", 1)


# --------------------------------------------------------------------- 3. two replicas at once


# This once failed under heavy load: a replica read the other's "active" marker while it
# was being written, took the live owner for dead and started a job twice; markers are
# now written atomically (_local.py _write_atomic).
async def test_two_engine_processes_share_the_work_and_fire_each_trigger_once(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    chains = [_Chain(tmp_path, n) for n in range(40)]
    async with _engines(bus_config) as engines:
        one, two = await asyncio.gather(engines.start("--name", "one"), engines.start("--name", "two"))
        assert (one.indexed, two.indexed) == (0, 0)
        # Registrations and completions interleave while both replicas run.
        await asyncio.gather(*(c.register(client) for c in chains))
        await asyncio.gather(*(_complete(client, c.a) for c in chains))
        try:
            statuses = await _wait_all(client, [c.b for c in chains], timeout=30)
        except lb.JobTimeoutError:
            await _assert_each_ran_once(client, [c for c in chains if _runs(c.counter) != 1], [one, two])
            raise
        assert [s.state for s in statuses] == [JobState.COMPLETE] * 40
        records = await _settled(client, [c.tid for c in chains])
        assert {r.state for r in records.values()} == {FiringState.DONE}
        assert {r.claimed_by for r in records.values()} <= {"one", "two"}
        assert one.proc.returncode is None and two.proc.returncode is None, one.log + two.log

    await _assert_each_ran_once(client, chains, [one, two])
    fired = await _fired_counts(client)
    assert fired == {c.tid: 1 for c in chains}
    assert sum(fired.values()) == 40


# --------------------------------------------------------------------- 4. a restart rebuilds the index


async def test_engine_restart_rebuilds_its_index_from_the_stream(
    client: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    early = [_Chain(tmp_path, n) for n in range(3)]
    for c in early:  # no engine runs yet
        await c.register(client)
        await _complete(client, c.a)
    late = _Chain(tmp_path, 3)
    async with _engines(bus_config) as engines:
        first = await engines.start()
        assert first.indexed == 3, first.log
        statuses = await _wait_all(client, [c.b for c in early])
        assert [s.state for s in statuses] == [JobState.COMPLETE] * 3
        await _settled(client, [c.tid for c in early])
        first.proc.terminate()
        assert await first.exited(timeout=20) == 143, first.log

        await late.register(client)
        await _complete(client, late.a)
        second = await engines.start()
        assert second.indexed == 1, second.log  # the fired ones are gone; the new one is in
        status = await client.wait(late.b, timeout=60)
        assert status.state is JobState.COMPLETE
        await _settled(client, [late.tid])

    assert [_runs(c.counter) for c in [*early, late]] == [1, 1, 1, 1]
    assert await _fired_counts(client) == {c.tid: 1 for c in [*early, late]}
    states = {c.tid: (await client.trigger(c.tid)) for c in [*early, late]}
    assert {tid: r.state if r else None for tid, r in states.items()} == {tid: "fired" for tid in states}


# --------------------------------------------------------------------- the root cause of a rare double run


async def test_a_job_that_ran_before_its_launcher_died_is_not_started_again(client: lb.Bus, tmp_path: Path) -> None:
    """The state a launcher leaves when SIGKILLed after the fork, before writing the pid file."""
    counter = tmp_path / "runs"
    job_id = lb.new_id()
    site_dir = client.config.home / "sites" / "local"
    jobdir = site_dir / "jobs" / job_id
    jobdir.mkdir(parents=True)
    (site_dir / "active").mkdir(exist_ok=True)
    (jobdir / "defn.json").write_text(_counting_job(counter).model_dump_json())
    (jobdir / "context.json").write_text(lb.JobContext(job_id=job_id, site="local").model_dump_json())
    (site_dir / "active" / job_id).write_text("a-launcher-that-died")
    counter.write_text("ran\n")  # the job ran once ...
    (jobdir / "exit_code").write_text("0")  # ... and its wrapper recorded how it ended

    async with lb.connect(client.config):  # another agent of the site: opening it adopts what was left
        status = await client.wait(job_id, timeout=30)
    assert status.state is JobState.COMPLETE
    assert _runs(counter) == 1
