"""A real OpenSSH server for tests: Debian's sshd on a free loopback port.

Each test gets its own sshd with a freshly generated host key and user key, logging in
as a dedicated unprivileged user (``lwfmtest``, created once) whose per-test directory
holds the authorized key and everything the test's jobs write.  The fixture stops the
server, kills the test's leftover jobs (found by their job directory, by pid) and
removes that directory in ``finally``.

Readiness is the server's own "Server listening" line, not a delay.

The performance suite uses :func:`running_sshd` as well (``bench/remote.py``), after
:func:`why_no_sshd` says it can; it is the one place that knows how to start sshd.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

TEST_USER = "lwfmtest"
SSHD = Path("/usr/sbin/sshd")


def why_no_sshd() -> str | None:
    """Why no sshd can be started here (None: it can); ``bench/remote.py`` asks it too, to skip cleanly."""
    if not SSHD.exists():
        return f"{SSHD} is not installed (scripts/system-deps.sh installs Debian's openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed (openssh-client)"
    if os.geteuid() != 0:
        return "the sshd tests run sshd as root and log in as a dedicated test user: needs root"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_test_user() -> pwd.struct_passwd:
    """The unprivileged login user; created once, its password set to '*' (no password, not locked)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    with contextlib.suppress(subprocess.CalledProcessError):  # a concurrent test run created it
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", TEST_USER], check=True, capture_output=True)
    # useradd leaves a locked password ('!'), which sshd refuses even for key logins without PAM.
    subprocess.run(["usermod", "-p", "*", TEST_USER], check=True, capture_output=True)
    return pwd.getpwnam(TEST_USER)


def keygen(path: Path) -> str:
    """An ed25519 key pair at ``path``; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lwfm-test", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a connection's privileged process, its session process, ...)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _pids_with_env(marker: str) -> list[int]:
    """Processes whose environment mentions ``marker`` (the test's directory): its jobs."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class SshServer:
    """A running sshd and everything a client needs to reach it."""

    root: Path
    port: int
    user: str
    home: Path
    workdir: Path  # per-test directory in the user's home (absolute)
    identity: Path
    known_hosts: Path
    host_key_pub: str
    proc: subprocess.Popen[bytes] | None = None
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _pump_thread: threading.Thread | None = None

    host = "127.0.0.1"

    @property
    def rel_workdir(self) -> str:
        """The per-test directory relative to the login directory (what remote paths use)."""
        return str(self.workdir.relative_to(self.home))

    def login(self) -> dict[str, object]:
        """How to reach this server: the ``ssh`` table of a site that goes through it (Slurm over SSH)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "identity_files": [str(self.identity)],
            "known_hosts": str(self.known_hosts),
        }

    def site_options(self, **extra: object) -> dict[str, object]:
        """Options of an ``ssh`` site reaching this server (TOML-ready types)."""
        return {**self.login(), "root": f"{self.rel_workdir}/sites", **extra}

    def start(self) -> None:
        config = self.root / "sshd_config"
        self.proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._lines = queue.Queue()
        stream = self.proc.stderr
        assert stream is not None
        self._pump_thread = threading.Thread(target=self._pump, args=(stream, self._lines), daemon=True)
        self._pump_thread.start()
        seen: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=15)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"sshd did not start within 15s: {seen}") from None
            seen.append(line)
            if "Server listening on" in line:
                return
            if line == "":  # EOF: it exited
                self.stop()
                raise RuntimeError(f"sshd exited at start: {seen}")

    @staticmethod
    def _pump(stream: IO[bytes], lines: queue.Queue[str]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                lines.put(raw.decode(errors="replace").rstrip())
        lines.put("")

    def drop_connections(self) -> int:
        """Kill the per-connection sshd processes: every client's connection drops; the listener stays.

        (Jobs are not among them: they run in their own sessions, re-parented away from sshd.)
        """
        assert self.proc is not None
        victims = _descendants(self.proc.pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(victims)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.drop_connections()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=10)  # it closes the pipe at EOF
            self._pump_thread = None
        self.proc = None

    def kill_jobs(self) -> None:
        for pid in _pids_with_env(str(self.workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def write_known_hosts(path: Path, port: int, key_line: str | None) -> Path:
    """A known_hosts with ``key_line`` trusted for [127.0.0.1]:port (or no entry at all)."""
    if key_line is None:
        path.write_text("")
    else:
        kind, blob = key_line.split()[:2]
        path.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    return path


@contextlib.contextmanager
def running_sshd(root: Path) -> Iterator[SshServer]:
    why = why_no_sshd()
    if why is not None:
        pytest.skip(why)
    user = ensure_test_user()
    home = Path(user.pw_dir)
    root.mkdir(parents=True, exist_ok=True)
    workdir = home / f"t-{uuid.uuid4().hex[:12]}"
    workdir.mkdir(mode=0o700)
    os.chown(workdir, user.pw_uid, user.pw_gid)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    host_key_pub = keygen(root / "ssh_host_ed25519_key")
    keygen(root / "id_ed25519")
    authorized = workdir / "authorized_keys"
    authorized.write_text((root / "id_ed25519.pub").read_text())
    os.chown(authorized, user.pw_uid, user.pw_gid)
    authorized.chmod(0o600)
    server: SshServer | None = None
    try:
        for _attempt in range(3):  # a free port can be taken between choosing it and binding it
            port = free_port()
            (root / "sshd_config").write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'ssh_host_ed25519_key'}\n"
                f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                "UsePAM no\nStrictModes no\nPermitRootLogin no\n"
                f"AllowUsers {TEST_USER}\nSubsystem sftp internal-sftp\nLogLevel INFO\n"
                "MaxStartups 100\nMaxSessions 100\n"
            )
            server = SshServer(
                root=root,
                port=port,
                user=TEST_USER,
                home=home,
                workdir=workdir,
                identity=root / "id_ed25519",
                known_hosts=write_known_hosts(root / "known_hosts", port, host_key_pub),
                host_key_pub=host_key_pub,
            )
            try:
                server.start()
                break
            except RuntimeError as exc:
                if "Address already in use" not in str(exc):
                    raise
        else:
            raise RuntimeError("no free port for sshd after 3 attempts")
        yield server
    finally:
        if server is not None:
            server.stop()
            server.kill_jobs()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd on a free loopback port, with its keys under ``tmp_path``."""
    with running_sshd(tmp_path / "sshd") as server:
        yield server


_CHECKOUT = Path(__file__).resolve().parents[2]


def python_for_user(server: SshServer) -> Path:
    """A ``python`` the login user can run, with this checkout's lwfm-bus and packages importable.

    For a site that runs the step runner or callbacks as that user.  This interpreter
    usually lives under root's home (pyenv), which the login user may not read; a system
    Python of the same version loads the same packages (same ABI).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    interpreter = next((c for c in candidates if _runs_as(server.user, c)), candidates[1])
    packages = sysconfig.get_paths()["purelib"]
    wrapper = server.workdir / "python"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="{_CHECKOUT}:{packages}"; export PYTHONPATH\nexec "{interpreter}" "$@"\n'
    )
    wrapper.chmod(0o755)
    user = pwd.getpwnam(server.user)
    os.chown(wrapper, user.pw_uid, user.pw_gid)
    return wrapper


def _runs_as(user: str, path: str) -> bool:
    """Can ``user`` execute ``path``: every directory on the way searchable, the file executable."""
    info = pwd.getpwnam(user)
    target = Path(path)
    for step in [*reversed(target.parents), target]:
        try:
            st = step.stat()
        except OSError:
            return False
        shift = 6 if st.st_uid == info.pw_uid else 3 if st.st_gid == info.pw_gid else 0
        if not st.st_mode & (0o1 << shift):
            return False
    return True
