"""A real single-node Slurm for tests: Debian's slurmctld, slurmd and munged.

Each test gets its own cluster on free loopback ports: a fresh munge key, a generated
minimal ``slurm.conf`` (see FACTS: root, no cgroups, no accounting, jobs start within
a second), daemon state and logs under ``tmp_path`` -- so nothing a previous test left
is "recovered".  What an unprivileged user needs (``slurm.conf``, the munge socket,
and slurmd's spool, from which a job's batch script is executed) lives in a small
world-readable directory, so jobs submitted over SSH by the test user run too.

Readiness is each daemon's own start-up line on its stderr, not a delay.  In
``finally`` every job is cancelled, the daemons are stopped, and any process still
carrying this cluster's ``SLURM_CONF`` is killed by pid.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._helpers import kill_processes_with
from tests.sites._sshd import free_port

_PROGRAMS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "scancel")


def why_no_slurm() -> str | None:
    """Why no cluster can be started here (None: it can); ``bench/remote.py`` asks it too."""
    missing = [p for p in _PROGRAMS if not shutil.which(p, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")]
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/system-deps.sh installs slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "the Slurm tests run slurmctld/slurmd as root (SlurmUser=root): needs root"
    return None


def _which(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert found is not None, name
    return found


class Daemon:
    """A foreground daemon whose stderr is read line by line (to know when it is ready)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread: threading.Thread | None = None

    def start(self, ready: str, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self.wait_for(ready, timeout)

    def wait_for(self, ready: str, timeout: float = 20) -> None:
        """Until the daemon writes a line containing ``ready`` on its stderr."""
        assert self.proc is not None
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"{self.name} did not say {ready!r} within {timeout}s: {self.seen[-20:]}") from None
            if line == "\x00EOF":
                raise RuntimeError(f"{self.name} exited at start (rc {self.proc.wait()}): {self.seen[-20:]}")
            self.seen.append(line)
            if ready in line:
                return

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.proc.stderr as stream:
            for raw in iter(stream.readline, b""):
                self.lines.put(raw.decode(errors="replace").rstrip())
        self.lines.put("\x00EOF")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)  # it closes the pipe at EOF


@dataclass
class SlurmCluster:
    """A running single-node cluster."""

    root: Path
    client_dir: Path
    conf: Path
    node: str
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def site_options(self, **extra: object) -> dict[str, object]:
        """Options of a local ``slurm`` site on this cluster (TOML-ready types)."""
        return {"slurm_conf": str(self.conf), "poll_interval_s": 0.25, "command_timeout_s": 15, **extra}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Slurm client command (for the test's own checks), with a timeout."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=check)

    def cancel_everything(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run("scancel", "--full", "--quiet", "--partition=debug", check=False)


def _munge_key(path: Path) -> None:
    path.write_bytes(os.urandom(1024))
    path.chmod(0o600)


@contextlib.contextmanager
def running_slurm(root: Path) -> Iterator[SlurmCluster]:
    why = why_no_slurm()
    if why is not None:
        pytest.skip(why)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("munge", "state", "log"):
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    client_dir = Path(tempfile.mkdtemp(prefix="lwfm-slurm-"))
    client_dir.chmod(0o755)
    node = socket.gethostname().split(".")[0]
    conf = client_dir / "slurm.conf"
    socket_path = client_dir / "munge.socket"
    cluster = SlurmCluster(root=root, client_dir=client_dir, conf=conf, node=node)
    try:
        _munge_key(root / "munge" / "munge.key")
        munged = Daemon(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--key-file={root / 'munge' / 'munge.key'}",
                f"--socket={socket_path}",
                f"--pid-file={root / 'munge' / 'munged.pid'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
                f"--log-file={root / 'log' / 'munged.log'}",
            ],
            dict(os.environ),
        )
        cluster.daemons.append(munged)
        munged.start("Created")
        conf.write_text(
            "ClusterName=lwfmtest\n"
            f"SlurmctldHost={node}(127.0.0.1)\n"
            f"SlurmctldPort={free_port()}\nSlurmdPort={free_port()}\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket_path}\n"
            f"StateSaveLocation={root / 'state'}\nSlurmdSpoolDir={client_dir / 'spool'}\n"
            f"SlurmctldPidFile={root / 'slurmctld.pid'}\nSlurmdPidFile={root / 'slurmd.pid'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
            "JobCompType=jobcomp/none\nSchedulerType=sched/builtin\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            "SchedulerParameters=batch_sched_delay=0\n"
            "SlurmctldDebug=debug\nKillWait=2\nMinJobAge=300\nMailProg=/bin/true\nReturnToService=2\n"
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1024 State=UNKNOWN\n"
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
        )
        conf.chmod(0o644)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        ctld = Daemon("slurmctld", [_which("slurmctld"), "-D", "-f", str(conf)], env)
        cluster.daemons.append(ctld)
        ctld.start("Running as primary controller")
        slurmd = Daemon("slurmd", [_which("slurmd"), "-D", "-f", str(conf)], env)
        cluster.daemons.append(slurmd)
        slurmd.start("slurmd started on")
        ctld.wait_for(f"node {node} registered")  # the node can take jobs from now on
        yield cluster
    finally:
        cluster.cancel_everything()
        for daemon in reversed(cluster.daemons):
            daemon.stop()
        kill_processes_with(f"SLURM_CONF={conf}")
        shutil.rmtree(client_dir, ignore_errors=True)


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[SlurmCluster]:
    """A real single-node Slurm (slurmctld + slurmd + munged), its state under ``tmp_path``."""
    with running_slurm(tmp_path / "slurm") as cluster:
        yield cluster
