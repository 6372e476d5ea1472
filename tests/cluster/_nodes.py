"""Three nats-servers on loopback from the configuration ``lwfm-bus cluster init`` generates.

Shared by tests/cluster/test_cluster.py and bench/cluster.py: :func:`running_nodes`
starts the three nodes as processes and waits until they are one cluster (every
node known to a client, a JetStream meta leader); processes started beside them
(:attr:`Cluster.others`) and the nodes are stopped when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from pydantic import SecretStr

import lwfm_bus as lb
from tests._helpers import cli_env

CLI = [sys.executable, "-m", "lwfm_bus"]
NODES = ("n1", "n2", "n3")


def free_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out on 127.0.0.1 (the nodes must know each other's in advance)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Process:
    """A long-running child: its output is kept (and drained, so it never blocks)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def ready(self, marker: str, timeout: float = 60) -> None:
        """Until the process prints ``marker`` (fails at once if it exits first)."""
        assert self.proc.stdout is not None

        async def read() -> None:
            assert self.proc.stdout is not None
            while raw := await self.proc.stdout.readline():
                self.lines.append(raw.decode(errors="replace"))
                if marker in self.lines[-1]:
                    return
            raise AssertionError(f"{self.name} exited before it was ready:\n{''.join(self.lines[-30:])}")

        await asyncio.wait_for(read(), timeout)
        self._drain = asyncio.get_running_loop().create_task(self._keep_reading())

    async def _keep_reading(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self.lines.append(raw.decode(errors="replace"))

    async def kill(self) -> None:
        """SIGKILL, reap, and keep what it said."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 30)
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 10)

    async def stop(self) -> None:
        """SIGTERM (SIGKILL if it lingers); never raises."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 15)
        with contextlib.suppress(Exception):
            await self.kill()


async def spawn(name: str, *argv: str, env: dict[str, str]) -> Process:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    return Process(name, proc)


@dataclass
class Cluster:
    root: Path
    urls: tuple[str, ...]
    env: dict[str, str]  # the clients' login, as `cluster init` wrote it
    servers: dict[str, Process] = field(default_factory=dict)
    others: list[Process] = field(default_factory=list)

    def config(self, home: Path) -> lb.BusConfig:
        return lb.BusConfig(
            servers=self.urls,
            user=self.env["LWFM_BUS_USER"],
            password=SecretStr(self.env["LWFM_BUS_PASSWORD"]),
            home=home,
            engine="off",
            autostart="off",
        )

    async def start_node(self, name: str) -> None:
        binary = Path(sys.executable).with_name("nats-server")
        server = await spawn(name, str(binary), "-c", str(self.root / f"{name}.conf"), env=cli_env())
        self.servers[name] = server
        await server.ready("Server is ready")

    async def kill_node(self, name: str) -> None:
        await self.servers[name].kill()

    def all_lines(self) -> str:
        return "".join(f"--- {p.name}\n" + "".join(p.lines[-400:]) for p in [*self.servers.values(), *self.others])


def init_cluster(root: Path) -> tuple[str, ...]:
    """``lwfm-bus cluster init`` of three nodes on free loopback ports into ``root``: the client URLs."""
    ports = free_ports(2 * len(NODES))
    nodes = [f"--node={n}=127.0.0.1:{ports[2 * i]}:{ports[2 * i + 1]}" for i, n in enumerate(NODES)]
    subprocess.run(
        [*CLI, "cluster", "init", "-o", str(root), *nodes, "--bind", "127.0.0.1", "--store-dir", str(root / "{node}")],
        check=True, capture_output=True, timeout=60, env=cli_env(),
    )  # fmt: skip
    return tuple(f"nats://127.0.0.1:{ports[2 * i]}" for i in range(len(NODES)))


def client_env(root: Path) -> dict[str, str]:
    """``secrets/clients.env`` as a mapping: LWFM_BUS_URL, LWFM_BUS_USER, LWFM_BUS_PASSWORD."""
    lines = (root / "secrets" / "clients.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


async def whole(cluster: Cluster, timeout: float = 60) -> None:
    """Until a client of one node has heard of all three, JetStream has a meta leader, and it places R3.

    Both are the server's answers: the routes' discovery comes to the client as INFO (the
    callback wakes us), and the JetStream API answers only once its cluster has a leader.
    """
    found = asyncio.Event()
    nc: NATS | None = None

    async def discovered() -> None:
        if nc is not None and len(nc.servers) >= len(NODES):
            found.set()

    nc = await nats.connect(
        cluster.urls[0], user=cluster.env["LWFM_BUS_USER"], password=cluster.env["LWFM_BUS_PASSWORD"],
        discovered_server_cb=discovered,
    )  # fmt: skip
    try:
        await discovered()
        await asyncio.wait_for(found.wait(), timeout)

        async def meta_leader() -> None:
            while True:  # each try is one answer of the server (503 until it has a leader)
                try:
                    await nc.jetstream(timeout=2).account_info()
                    return
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    await asyncio.sleep(0.1)  # between requests, bounded by the timeout

        await asyncio.wait_for(meta_leader(), timeout)

        async def three_peers() -> None:
            # A meta leader may know fewer peers than there are nodes for a moment ("no suitable
            # peers for placement"): until a stream of three copies can be placed (then removed).
            js = nc.jetstream(timeout=5)
            while True:
                try:
                    await js.add_stream(StreamConfig(name="nodes-whole", subjects=["nodes-whole"], num_replicas=3))
                    await js.delete_stream("nodes-whole")
                    return
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    await asyncio.sleep(0.1)  # between requests, bounded by the timeout

        await asyncio.wait_for(three_peers(), timeout)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def running_nodes(root: Path, timeout: float = 60) -> AsyncIterator[Cluster]:
    """Three nodes generated into ``root``, whole; they and :attr:`Cluster.others` are stopped at the end.

    ``LWFM_TEST_SHOW_LOGS`` set: every process's last lines go to stderr afterwards.
    """
    urls = await asyncio.to_thread(init_cluster, root)
    cluster = Cluster(root=root, urls=urls, env=client_env(root))
    try:
        await asyncio.gather(*(cluster.start_node(name) for name in NODES))
        await whole(cluster, timeout)
        yield cluster
    finally:
        for proc in [*cluster.others, *cluster.servers.values()]:
            await proc.stop()
        if os.environ.get("LWFM_TEST_SHOW_LOGS"):
            sys.stderr.write(cluster.all_lines())
