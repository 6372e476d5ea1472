"""Where a remote adapter's commands run: this machine, or a host behind SSH.

The Slurm adapter drives ``sbatch``/``squeue``/... either locally or over an SSH
connection, and the SSH adapter runs its small shell scripts remotely; both speak to a
:class:`Host`, so a scheduler adapter never cares which side it is on.  Commands are
always argv lists: locally they are executed directly (no shell), over SSH they are
joined with :func:`shlex.join`, so every value is quoted for the remote shell.

Every command has a timeout: a Slurm client blocks for a long time when slurmctld is
dead, and an adapter must report that, not hang with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from lwfm_bus import LwfmBusError, SiteError

from ._scripts import RESOLVE_DIR

__all__ = [
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "Host",
    "HostUnreachable",
    "LocalHost",
    "plain_error",
    "resolve_dir",
    "sha256_file",
]


class HostUnreachable(SiteError):
    """The host cannot be reached right now (connection refused, dropped, timed out)."""


class CommandTimeout(SiteError):
    """A command did not finish in time (for Slurm: typically slurmctld is down)."""


class CommandFailed(SiteError):
    """A command ended with an unexpected status or output; the message names it."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: its status and both outputs, undecoded."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def name(self) -> str:
        """The program, for messages (never the arguments: they may carry user data)."""
        return self.argv[0] if self.argv else "?"

    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def error_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace").strip()

    def check(self) -> CommandResult:
        """Raise :class:`CommandFailed` naming the program, its status and its stderr, unless it succeeded."""
        if self.returncode != 0:
            raise CommandFailed(f"{self.name} exited {self.returncode}: {self.error_text()[:500] or '(no stderr)'}")
        return self


class Host(Protocol):
    """A machine an adapter acts on."""

    label: str

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` with ``env`` added to the environment; raise on timeout or lost connection."""
        ...

    async def read_file(self, path: str) -> bytes | None:
        """A file's bytes, or None if it does not exist."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a private file (0600; missing parents 0700), atomically."""
        ...

    async def put(self, local_path: Path, site_path: str) -> str:
        """Copy a file onto the host, verified; return its ``sha256:<hex>``."""
        ...

    async def get(self, site_path: str, local_path: Path) -> str:
        """Copy a file off the host, verified; return its ``sha256:<hex>``."""
        ...


def plain_error(exc: BaseException) -> str:
    """An error in words for a person: our own errors' messages, an OS error's meaning.

    Never a class name (``HostUnreachable: ...``, ``ConnectionRefusedError: [Errno 111]
    Connect call failed``): those are the program's words, and in a user's message they
    read as a crash.  Used wherever an adapter's failure becomes a line a user reads.
    """
    if isinstance(exc, LwfmBusError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.errno > 0:
            return os.strerror(exc.errno)  # "Connection refused", not asyncio's "Connect call failed (...)"
        if exc.strerror:
            return exc.strerror  # a resolver's answer ("Temporary failure in name resolution")
    return str(exc) or "unexpected error"


async def resolve_dir(host: Host, path: str, timeout: float) -> str:
    """``path`` on ``host`` (relative: to the login directory), created 0700, as an absolute path.

    Absolute because it is written into jobs' environments and scheduler options, which
    must not depend on the directory a job starts in.
    """
    result = await host.run(["/bin/sh", "-c", RESOLVE_DIR, "lwfm-resolve", path], timeout=timeout)
    resolved = result.check().text().strip()
    if not resolved.startswith("/") or "\n" in resolved:
        raise CommandFailed(f"cannot resolve {path} on {host.label}: {resolved[:300]!r}")
    return resolved


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a local file, read in blocks (files may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


class LocalHost:
    """This machine: commands are child processes (argv, never a shell), files are local."""

    label = "localhost"

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        full_env = {**os.environ, **(env or {})}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # a timeout kills the command and anything it started
            )
        except OSError as exc:
            raise CommandFailed(f"{argv[0]}: cannot run it here: {exc}") from exc
        try:
            with anyio.fail_after(timeout):  # not asyncio.wait_for, which can drop a cancel on 3.11
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise CommandTimeout(f"{argv[0]} did not answer within {timeout:g}s on {self.label}") from None
        assert proc.returncode is not None
        return CommandResult(tuple(argv), proc.returncode, out, err)

    async def read_file(self, path: str) -> bytes | None:
        try:
            return await anyio.Path(path).read_bytes()
        except FileNotFoundError:
            return None

    async def write_file(self, path: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(_write_private, Path(path), data)

    async def put(self, local_path: Path, site_path: str) -> str:
        return await anyio.to_thread.run_sync(_copy_verified, local_path, Path(site_path))

    async def get(self, site_path: str, local_path: Path) -> str:
        return await anyio.to_thread.run_sync(_copy_verified, Path(site_path), local_path)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _copy_verified(src: Path, dst: Path) -> str:
    """Copy through a temporary name, compare checksums, then rename into place.

    Missing directories on the way are created, as the local site's put and get do.
    """
    tmp = dst.with_name(f".{dst.name}.lwfm-tmp")
    try:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp)
        except OSError as exc:
            raise CommandFailed(f"copy {src} to {dst}: {exc.strerror or exc}") from exc
        want, got = sha256_file(src), sha256_file(tmp)
        if want != got:
            raise CommandFailed(f"checksum mismatch copying {src} to {dst}: {want} != {got}")
        tmp.replace(dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return want
