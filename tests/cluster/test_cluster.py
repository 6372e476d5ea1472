"""A group's bus on a NATS cluster: a node is lost mid-run, and nothing is lost or run twice.

Three nats-servers run as processes on 127.0.0.1 from the configuration ``lwfm-bus
cluster init`` generates; two ``lwfm-bus engine`` and two ``lwfm-bus agent --site
local`` processes (each with its own home, as on separate machines) are given all
three URLs.  A fan-out/fan-in of 300 jobs runs while one node is SIGKILLed: the
leader of the ``LWFM`` stream (then restarted from its configuration and store), or
a follower (left dead).  Every job appends its own id to one record file, so the
record says what really ran; the stream says what was fired and how each job ended.

Every wait is on something that happens: a line a process prints, a process's exit,
an event on the bus, a server's answer.  Nothing sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._replicas import open_bucket
from lwfm_bus._cluster import load_cluster
from tests._helpers import cli_env, write_sites
from tests.cluster._nodes import CLI, NODES, Cluster, client_env, init_cluster, running_nodes, spawn

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals")

ENGINES = ("e1", "e2")
AGENTS = ("agent1", "agent2")  # each with its own home: two places, as two machines
FAN_OUT = 300
# Each job appends its own id (from its environment) to the record: one short write with
# O_APPEND, so concurrent jobs never interleave.
_RECORD = 'printf "%s\\n" "$LWFM_JOB_ID" >> "$1"'


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, *, processes: bool = True) -> AsyncIterator[Cluster]:
    """Three nodes, two engines and two agents of site ``local`` (unless not ``processes``), stopped at the end."""
    sites = write_sites(tmp_path / "sites.toml", {"local": {"adapter": "local", "max_concurrent": 16}})
    async with running_nodes(tmp_path / "cluster") as cluster:
        env = cli_env(**cluster.env, LWFM_BUS_SITES=str(sites))
        for name in ENGINES if processes else ():
            engine = await spawn(
                name, *CLI, "--home", str(tmp_path / name), "-v", "engine", "--name", name, "--ack-wait", "5", env=env
            )
            cluster.others.append(engine)
            await engine.ready(f"engine {name} ready")
        for name in AGENTS if processes else ():
            agent = await spawn(name, *CLI, "--home", str(tmp_path / name), "agent", "--site", "local", env=env)
            cluster.others.append(agent)
            await agent.ready("agent for local")
        yield cluster


def _job(record: Path, name: str) -> lb.JobDefn:
    return lb.JobDefn.of(["/bin/sh", "-c", _RECORD, "sh", str(record)], name=name)


@dataclass
class FanOut:
    root: str
    middle: list[str]
    join: str
    triggers: list[str]

    @property
    def jobs(self) -> list[str]:
        return [self.root, *self.middle, self.join]


async def _register(bus: lb.Bus, record: Path) -> FanOut:
    """One root, 300 jobs after it, one join after all of them; the root is submitted last."""
    wf = lb.new_id()
    flow = FanOut(root=f"root-{wf}", middle=[f"m{i}-{wf}" for i in range(FAN_OUT)], join=f"join-{wf}", triggers=[])
    for job_id in flow.middle:
        trigger = await bus.set_job_trigger(_job(record, "middle"), flow.root, job_id=job_id, workflow=wf)
        flow.triggers.append(trigger.trigger_id)
    join = await bus.set_job_trigger(_job(record, "join"), flow.middle, job_id=flow.join, workflow=wf)
    flow.triggers.append(join.trigger_id)
    await bus.submit(_job(record, "root"), job_id=flow.root, workflow=wf)
    return flow


async def _until_complete(bus: lb.Bus, count: int, timeout: float) -> None:
    """Until ``count`` jobs have completed (their COMPLETE events, heard from the stream)."""

    async def count_them() -> None:
        while True:  # a subscription asked for during an election is refused: asked again, bounded by the timeout
            seen: set[str] = set()
            try:
                async with bus.subscribe("lwfm.local.job.*.*.COMPLETE", from_start=True) as events:
                    async for event in events:
                        if isinstance(event, lb.JobStatusEvent):
                            seen.add(event.data.job_id)
                            if len(seen) >= count:
                                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await asyncio.sleep(0.1)  # between requests to a cluster that is electing a leader

    await asyncio.wait_for(count_them(), timeout)


async def _stream_leader(bus: lb.Bus) -> str:
    info = await bus.jetstream.stream_info("LWFM")
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def _stored(bus: lb.Bus, subject_filter: str) -> list[lb.Event]:
    """Every event stored on ``subject_filter``: each stored message, duplicates included."""
    async with bus.replay(subject_filter) as history:
        return [event async for event in history]


async def _check_exactly_once(bus: lb.Bus, flow: FanOut, record: Path) -> None:
    # What really ran: the jobs' own records.
    ran = Counter(record.read_text().split())
    assert set(ran) == set(flow.jobs), f"missing {sorted(set(flow.jobs) - set(ran))[:5]}"
    assert [job for job, n in ran.items() if n != 1] == []
    # Every firing once: the trigger outcome events stored in the stream.
    outcomes = await _stored(bus, "lwfm.local.trigger.>")
    fired = Counter(e.data.trigger_id for e in outcomes if isinstance(e, lb.TriggerFiredEvent))
    assert set(fired) == set(flow.triggers)
    assert [t for t, n in fired.items() if n != 1] == []
    failed = [e for e in outcomes if isinstance(e, lb.TriggerFailedEvent | lb.TriggerExpiredEvent)]
    assert failed == []
    # Every job ended once, COMPLETE: its terminal events stored in the stream.
    ends: Counter[tuple[str, JobState]] = Counter()
    for event in await _stored(bus, "lwfm.local.job.>"):
        if isinstance(event, lb.JobStatusEvent) and event.data.state.is_terminal:
            ends[(event.data.job_id, event.data.state)] += 1
    assert sorted(ends) == sorted((job, JobState.COMPLETE) for job in flow.jobs)
    assert [key for key, n in ends.items() if n != 1] == []


async def _three_copies(bus: lb.Bus, streams: tuple[str, ...]) -> None:
    """Everything the bus keeps is kept three times on a 3-node cluster: streams and buckets."""
    for stream in streams:
        info = await bus.jetstream.stream_info(stream)
        assert (stream, info.config.num_replicas) == (stream, 3)


@contextlib.asynccontextmanager
async def _client(cluster: Cluster, home: Path) -> AsyncIterator[lb.Bus]:
    async with lb.connect(cluster.config(home)) as bus:
        yield bus


async def _lose_a_node(tmp_path: Path, *, leader: bool, restart: bool) -> None:
    record = tmp_path / "ran.txt"
    async with running_cluster(tmp_path) as cluster, _client(cluster, tmp_path / "client") as bus:
        flow: FanOut | None = None
        try:
            await _three_copies(bus, ("LWFM", "LWFM_SUBMIT", "LWFM_DLQ", "KV_lwfm_firings", "KV_lwfm_joins"))
            flow = await _register(bus, record)
            await _until_complete(bus, 60, timeout=60)
            stream_leader = await _stream_leader(bus)
            victim = stream_leader if leader else next(n for n in NODES if n != stream_leader)
            await cluster.kill_node(victim)
            await _until_complete(bus, 150, timeout=60)  # the run goes on with two nodes
            if restart:
                await cluster.start_node(victim)  # from the same configuration and store
            await _until_complete(bus, len(flow.jobs), timeout=90)
            await _check_exactly_once(bus, flow, record)
            await _three_copies(bus, ("KV_lwfm_launches",))  # made by the agents' first job
        except BaseException:
            ran = record.read_text().split() if record.exists() else []
            missing = sorted(set(flow.jobs) - set(ran)) if flow is not None else []
            sys.stderr.write(f"{len(ran)} jobs ran, not {missing[:10]}; {cluster.all_lines()}")
            raise


async def test_the_stream_leader_is_killed_mid_run_and_restarted(tmp_path: Path) -> None:
    await _lose_a_node(tmp_path, leader=True, restart=True)


async def test_a_follower_is_killed_mid_run_and_stays_dead(tmp_path: Path) -> None:
    await _lose_a_node(tmp_path, leader=False, restart=False)


def test_the_compose_file_describes_the_tested_topology() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "docker" / "cluster.compose.yml").read_text())
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if s.get("entrypoint")}
    assert sorted(nodes) == sorted(NODES)
    for name, service in nodes.items():
        assert service["entrypoint"] == ["nats-server", "-c", "/etc/nats/nats-server.conf"]
        assert f"./cluster/{name}.conf:/etc/nats/nats-server.conf:ro" in service["volumes"]  # its own only
        assert not any("secrets" in volume for volume in service["volumes"])
    clients = {name: s for name, s in services.items() if name not in nodes}
    engines = sorted(s["command"][2] for s in clients.values() if s["command"][0] == "engine")
    agents = [s["command"] for s in clients.values() if s["command"][0] == "agent"]
    assert engines == sorted(ENGINES)
    assert agents == [["agent", "--site", "local"]] * len(AGENTS)
    assert len(clients) == len(ENGINES) + len(AGENTS)
    for service in clients.values():
        assert service["env_file"] == ["./cluster/secrets/clients.env"]
        assert sorted(service["depends_on"]) == sorted(NODES)
        assert not any(".conf" in volume for volume in service["volumes"])
    # Every process keeps its own state, as the tested processes each have their own home.
    states = [v for s in services.values() for v in s["volumes"] if not v.startswith("./")]
    assert len({v.split(":")[0] for v in states}) == len(services)


def test_init_writes_each_node_its_configuration_and_keeps_the_secrets_private(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    urls = init_cluster(root)
    routes = (root / "secrets" / "routes.secret").read_text().strip()
    password = client_env(root)["LWFM_BUS_PASSWORD"]
    assert client_env(root)["LWFM_BUS_URL"] == ",".join(urls)  # every node: a client fails over
    # Three copies, said outright: "auto" reads the INFO a node gives at connect time,
    # which may predate its routes (one copy, wrongly).
    assert client_env(root)["LWFM_BUS_REPLICAS"] == "3"
    for private in ("secrets/routes.secret", "secrets/clients.env", *(f"{n}.conf" for n in NODES)):
        assert (root / private).stat().st_mode & 0o777 == 0o600, private
    shared = (root / "cluster.toml").read_text()
    assert routes not in shared and password not in shared
    conf = (root / "n2.conf").read_text()
    assert routes in conf and password not in conf  # nodes check the clients' bcrypt hash
    assert 'server_name: "n2"' in conf and conf.count("nats-route://") == 2
    again = subprocess.run(
        [*CLI, "cluster", "config", "--cluster", str(root / "cluster.toml"), "--node", "n2"],
        check=True, capture_output=True, text=True, timeout=60, env=cli_env(),
    ).stdout  # fmt: skip
    assert again == conf
    # Bad input: one line each, no traceback.
    for argv, message in (
        (["config", "--cluster", str(root / "cluster.toml"), "--node", "n9"], "node 'n9' is not in the cluster"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=h:notaport"], "expected NAME=HOST"),
        (["init", "-o", str(root), "--node", "n1=h"], "never overwrites secrets"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=[::1"], "expected NAME=HOST"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=[::1]junk"], "expected NAME=HOST"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=::1"], "an IPv6 host in brackets"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=h:70000"], "client_port: Input should be less than"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=h", "--bind", "a b"], "bind: String should match"),
        (["init", "-o", str(tmp_path / "x"), "--node", "n1=h", "--name", "a.b"], "name: String should match"),
        (
            ["init", "-o", str(tmp_path / "x"), "--node", "n1=h:1:2", "--node", "n2=h:3:4"],
            "several nodes on host h would share the store directory '/data/jetstream': put {node} in --store-dir",
        ),
    ):
        done = subprocess.run([*CLI, "cluster", *argv], capture_output=True, text=True, timeout=60, env=cli_env())
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "pydantic" not in done.stderr and not (tmp_path / "x").exists(), done.stderr
    (root / "secrets" / "routes.secret").chmod(0o644)
    done = subprocess.run(
        [*CLI, "cluster", "config", "--cluster", str(root / "cluster.toml"), "--node", "n1"],
        capture_output=True, text=True, timeout=60, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 2 and "readable by others" in done.stderr


def test_node_names_beyond_toml_bare_keys_and_ipv6_addresses_make_a_readable_cluster(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    nodes = {"a:b@c": "[::1]:4222:6222", "n+2": "[::1]:4223:6223", "n~3^x": "[fd00::3]"}
    subprocess.run(
        [*CLI, "cluster", "init", "-o", str(root), "--bind", "::", "--store-dir", "/data/{node}",
         *(f"--node={name}={where}" for name, where in nodes.items())],
        check=True, capture_output=True, text=True, timeout=60, env=cli_env(),
    )  # fmt: skip
    cluster = load_cluster(root / "cluster.toml")
    assert list(cluster.nodes) == list(nodes)
    assert cluster.client_urls() == ("nats://[::1]:4222", "nats://[::1]:4223", "nats://[fd00::3]:4222")
    conf = subprocess.run(
        [*CLI, "cluster", "config", "--cluster", str(root / "cluster.toml"), "--node", "a:b@c"],
        check=True, capture_output=True, text=True, timeout=60, env=cli_env(),
    ).stdout  # fmt: skip
    assert conf == (root / "a:b@c.conf").read_text()
    assert 'listen: "[::]:4222"' in conf and 'listen: "[::]:6222"' in conf  # the bind address, bracketed
    assert 'client_advertise: "[::1]:4222"' in conf and 'store_dir: "/data/a:b@c"' in conf
    assert "@[::1]:6223" in conf and "@[fd00::3]:6222" in conf  # the routes to the others


async def test_streams_made_with_one_copy_are_raised_to_three_and_never_lowered(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, processes=False) as cluster:
        one = cluster.config(tmp_path / "home").model_copy(update={"replicas": 1})
        everything = ("LWFM", "LWFM_SUBMIT", "LWFM_DLQ", *(f"KV_{b}" for b in _BUCKETS))
        async with lb.connect(one) as bus:
            assert bus.replicas == 1
            await _open_buckets(bus)  # as the engine (firings, joins) and the agents (launches) do
            for stream in everything:
                assert (stream, (await bus.jetstream.stream_info(stream)).config.num_replicas) == (stream, 1)
        async with lb.connect(cluster.config(tmp_path / "home")) as bus:  # auto: three nodes, three copies
            assert bus.replicas == 3
            await _open_buckets(bus)
            await _three_copies(bus, everything)
        async with lb.connect(one) as bus:  # a process configured for less takes nothing away
            await _open_buckets(bus)
            await _three_copies(bus, everything)


_BUCKETS = ("lwfm_firings", "lwfm_joins", "lwfm_launches")


async def _open_buckets(bus: lb.Bus) -> None:
    for bucket in _BUCKETS:
        await open_bucket(bus.jetstream, KeyValueConfig(bucket=bucket, history=1), bus.replicas)


async def test_a_single_server_keeps_one_copy_and_refuses_three_in_one_line(
    bus_config: lb.BusConfig, caplog: pytest.LogCaptureFixture
) -> None:
    alone = bus_config.model_copy(update={"engine": "off"})
    with pytest.raises(lb.ConfigError, match="not part of a JetStream cluster"):
        async with lb.connect(alone.model_copy(update={"replicas": 3})):
            pass  # pragma: no cover
    async with lb.connect(alone) as bus:  # auto
        assert bus.replicas == 1
        assert (await bus.jetstream.stream_info("LWFM")).config.num_replicas == 1
        await open_bucket(bus.jetstream, KeyValueConfig(bucket="lwfm_launches", history=1), 1)
        # An existing bucket asked for three copies on one server: one line, not a warning.
        with caplog.at_level(logging.WARNING, logger="lwfm_bus"):
            with pytest.raises(lb.ConfigError, match="not part of a JetStream cluster"):
                await open_bucket(bus.jetstream, KeyValueConfig(bucket="lwfm_launches", history=1), 3)
    # An existing home's streams, then LWFM_BUS_REPLICAS=3: the same one line, no warning per stream.
    with caplog.at_level(logging.WARNING, logger="lwfm_bus"):
        with pytest.raises(lb.ConfigError, match="not part of a JetStream cluster") as raised:
            async with lb.connect(alone.model_copy(update={"replicas": 3})):
                pass  # pragma: no cover
    assert "\n" not in str(raised.value) and "(set LWFM_BUS_REPLICAS=auto or 1)" in str(raised.value)
    assert [r.getMessage() for r in caplog.records if "copies" in r.getMessage()] == []
