"""One pooled, self-healing SSH connection per target, shared by the sites that use it.

Why a pool of one: every operation of a site (a submit, the watcher's batched status
query, an SFTP copy) opens a channel on the same connection, which costs a round trip
instead of a TCP + key exchange + authentication.  An SSH site and a Slurm site that
reach the same login node with the same settings share that connection.

Why self-healing: a laptop sleeps, a VPN drops, a login node reboots.  A lost
connection is noticed (keepalives, or a failed channel), and the next operation
reconnects with exponential backoff up to ``reconnect_timeout_s``, saying so once
per outage (one WARNING, the further attempts at DEBUG).  Refusals that retrying
cannot fix -- a host name that does not resolve, a host key that is unknown or has
changed, a refused key, a missing key or known_hosts file -- are raised at once, in
one line, with what to do about them: a minute of retries would only hide a typo.

Security: host keys are always verified against a known_hosts file (never disabled,
no trust-on-first-use), authentication is by key only, and no secret is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import anyio
import asyncssh
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, StringConstraints

from lwfm_bus import SiteError

from ._hosts import CommandFailed, CommandResult, CommandTimeout, HostUnreachable, plain_error, sha256_file

__all__ = [
    "AuthRejected",
    "HostKeyRejected",
    "HostNotFound",
    "SshHost",
    "SshMisconfigured",
    "SshPool",
    "SshTarget",
    "acquire_pool",
    "release_pool",
]

log = logging.getLogger("lwfm_bus.adapters.ssh")

HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-\[\]%]{1,255}$")]
UserName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.\-@]{0,63}$")]
_JUMP = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_.][A-Za-z0-9_.\-]{0,63})@)?(?P<host>[A-Za-z0-9_.\-]{1,255})(?::(?P<port>\d{1,5}))?$"
)


class HostKeyRejected(SiteError):
    """The server's host key is not in the known_hosts file, or differs from the one there."""


class AuthRejected(SiteError):
    """The server refused every key we offered."""


class HostNotFound(SiteError):
    """The host name does not resolve (``Name or service not known``): a typo, or a name this
    machine's resolver does not know.  A resolver that could not answer *now* (``EAI_AGAIN``)
    is transient instead, and retried."""


class SshMisconfigured(SiteError):
    """A setting of the site cannot work as written (a key file that does not exist)."""


# Refusals that no retry can fix: raised at once, never retried by the pool.
_PERMANENT = (HostKeyRejected, AuthRejected, HostNotFound, SshMisconfigured)
# getaddrinfo's "this name does not exist" answers (EAI_NODATA is not defined everywhere).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class SshTarget(BaseModel):
    """How to reach one SSH server; the same settings on two sites share one connection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: HostName = Field(description="Server name or address.")
    port: int = Field(default=22, ge=1, le=65535)
    user: UserName | None = Field(default=None, description="Login name (default: the local user).")
    identity_files: tuple[Path, ...] = Field(
        default=(), description="Private keys to offer (default: ~/.ssh/id_* and a running agent)."
    )
    known_hosts: Path | None = Field(
        default=None, description="Trusted host keys (default: ~/.ssh/known_hosts). Always checked."
    )
    jump_host: str | None = Field(
        default=None, description="'[user@]host[:port]' to go through; checked against the same known_hosts."
    )
    connect_timeout_s: PositiveFloat = Field(default=10.0, description="One connection attempt.")
    keepalive_s: PositiveFloat = Field(default=15.0, description="Keepalive interval (3 missed: dropped).")
    reconnect_timeout_s: PositiveFloat = Field(default=60.0, description="How long to retry a lost connection.")

    def jump(self) -> tuple[str | None, str, int] | None:
        if self.jump_host is None:
            return None
        m = _JUMP.fullmatch(self.jump_host)
        if m is None:
            raise SiteError(f"jump_host {self.jump_host!r}: expected '[user@]host[:port]'")
        return m["user"], m["host"], int(m["port"] or 22)

    def known_hosts_path(self) -> Path:
        return (self.known_hosts or Path("~/.ssh/known_hosts")).expanduser()


class SshPool:
    """The connection to one target: opened on demand, reopened with backoff when it drops."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.label = f"{target.user + '@' if target.user else ''}{target.host}:{target.port}"
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jump: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.connects = 0
        self.failed_attempts = 0
        self._outage_said = False  # a failure was warned about, and no connection has worked since

    # ------------------------------------------------------------------ connection

    async def connection(self, *, retry: bool = True) -> asyncssh.SSHClientConnection:
        """A live connection, reconnecting (with backoff) if the last one is gone.

        ``retry=False`` makes one attempt: for a caller with a back-off loop of its own
        (a site agent opening the site), which reports the failure itself at once.
        """
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            await self._close_quietly()
            self._conn = await self._reconnect(retry=retry)
            return self._conn

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        """Until ``predicate()`` holds, woken by each connect or failed attempt (for tests and tools)."""

        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(until(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _reconnect(self, *, retry: bool = True) -> asyncssh.SSHClientConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.target.reconnect_timeout_s
        delay = 0.1
        while True:
            try:
                conn = await self._connect_once()
            except _PERMANENT:
                self.failed_attempts += 1
                await self._notify()
                raise
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                self.failed_attempts += 1
                await self._notify()
                why = _describe(exc)
                if not retry:
                    raise HostUnreachable(f"cannot reach {self.label}: {why}") from exc
                if loop.time() + delay > deadline:
                    raise HostUnreachable(
                        f"cannot reach {self.label} (gave up after {self.target.reconnect_timeout_s:g}s): {why}"
                    ) from exc
                # One warning per outage, however many operations meet it; each further attempt is detail.
                level = logging.DEBUG if self._outage_said else logging.WARNING
                self._outage_said = True
                log.log(
                    level,
                    "ssh %s: connection failed (%s); retrying with back-off for up to %gs",
                    self.label, why, self.target.reconnect_timeout_s,
                )  # fmt: skip
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, 5.0)
                continue
            self.connects += 1
            await self._notify()
            if self._outage_said:
                log.warning("ssh %s: reconnected", self.label)  # the end of the outage warned about
            elif self.connects > 1:
                log.info("ssh %s: reconnected", self.label)
            self._outage_said = False
            return conn

    def _options(self, user: str | None) -> dict[str, Any]:
        t = self.target
        known_hosts = t.known_hosts_path()
        if not known_hosts.is_file():
            raise HostKeyRejected(
                f"known_hosts file {known_hosts} does not exist: host keys are always verified; "
                f"add the server's key to it (check it out of band, e.g. ssh-keyscan -p {t.port} {t.host})"
            )
        opts: dict[str, Any] = {
            "known_hosts": str(known_hosts),
            "connect_timeout": t.connect_timeout_s,
            "keepalive_interval": t.keepalive_s,
            "keepalive_count_max": 3,
            "preferred_auth": "publickey",
            "password_auth": False,
            "kbdint_auth": False,
            "config": [],  # settings come from sites.toml only, so a run is reproducible
        }
        if user:
            opts["username"] = user
        if t.identity_files:
            keys = [p.expanduser() for p in t.identity_files]
            missing = [str(k) for k in keys if not k.is_file()]
            if missing:
                raise SshMisconfigured(f"ssh {t.host}:{t.port}: identity file {missing[0]} does not exist")
            opts["client_keys"] = [str(k) for k in keys]
            opts["agent_path"] = None
        return opts

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        t = self.target
        tunnel: asyncssh.SSHClientConnection | None = None
        jump = t.jump()
        if jump is not None:
            juser, jhost, jport = jump
            tunnel = await self._open(jhost, jport, self._options(juser or t.user), None)
        try:
            conn = await self._open(t.host, t.port, self._options(t.user), tunnel)
        except BaseException:
            if tunnel is not None:
                tunnel.close()
            raise
        self._jump = tunnel
        return conn

    async def _open(
        self, host: str, port: int, opts: dict[str, Any], tunnel: asyncssh.SSHClientConnection | None
    ) -> asyncssh.SSHClientConnection:
        try:
            if tunnel is not None:
                return await asyncssh.connect(host, port, tunnel=tunnel, **opts)
            return await asyncssh.connect(host, port, **opts)
        except socket.gaierror as exc:
            if exc.errno not in _NO_SUCH_NAME:
                raise  # the resolver could not answer now (EAI_AGAIN): transient, retried
            raise HostNotFound(
                f"ssh {host}:{port}: the host name {host!r} does not resolve ({exc.strerror}); "
                "check the site's host (or jump_host) setting"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyRejected(_host_key_message(host, port, Path(opts["known_hosts"]), exc)) from None
        except asyncssh.PermissionDenied as exc:
            user = opts.get("username", "the local user")
            raise AuthRejected(f"ssh {host}:{port}: key-based login as {user} was refused: {exc.reason}") from None

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        """Forget a connection that failed under us; the next operation reconnects."""
        if self._conn is conn:
            conn.close()
            self._conn = None

    async def _close_quietly(self) -> None:
        for c in (self._conn, self._jump):
            if c is not None:
                c.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.wait_closed(), 2)
        self._conn = self._jump = None

    async def close(self) -> None:
        async with self._lock:
            await self._close_quietly()

    # ------------------------------------------------------------------ operations

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` (quoted for the remote shell); on a lost connection, reconnect and run it again.

        Running again is safe because every command the adapters send is idempotent
        (submission claims its job directory before it starts anything).
        """
        words = [*argv]
        if env:
            words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
        command = shlex.join(words)
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                # anyio's timeout, not asyncio.wait_for: that one can drop the caller's cancel on
                # Python 3.11 (a watcher asked to stop while its status command returns ran on).
                with anyio.fail_after(timeout):
                    done = await conn.run(command, input=stdin, encoding=None, check=False)
            except TimeoutError:
                raise CommandTimeout(f"{argv[0]} did not answer within {timeout:g}s on {self.label}") from None
            except (asyncssh.Error, OSError) as exc:
                self._drop(conn)
                if attempt == 2:
                    raise HostUnreachable(f"ssh {self.label}: {argv[0]}: {_describe(exc)}") from exc
                log.info("ssh %s: connection lost during %s (%s); reconnecting", self.label, argv[0], _describe(exc))
                continue
            rc = done.exit_status
            if rc is None or rc < 0:
                sig = done.exit_signal[0] if done.exit_signal else "?"
                raise CommandFailed(f"{argv[0]} on {self.label} was killed by signal {sig}")
            out = done.stdout if isinstance(done.stdout, bytes) else b""
            err = done.stderr if isinstance(done.stderr, bytes) else b""
            return CommandResult(tuple(argv), rc, out, err)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def sftp(self) -> Any:
        """An SFTP session on the pooled connection (one channel, closed afterwards)."""
        for attempt in (1, 2):
            conn = await self.connection()
            try:
                client = await conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                self._drop(conn)
                if attempt == 2:
                    raise HostUnreachable(f"ssh {self.label}: sftp: {_describe(exc)}") from exc
                continue
            break
        try:
            yield client
        finally:
            client.exit()


class SshHost:
    """A :class:`~adapters._hosts.Host` over a pooled SSH connection (commands + SFTP)."""

    def __init__(self, pool: SshPool, command_timeout_s: float = 60.0) -> None:
        self.pool = pool
        self.label = pool.label
        self._timeout = command_timeout_s

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        return await self.pool.run(argv, stdin=stdin, timeout=timeout, env=env)

    async def read_file(self, path: str) -> bytes | None:
        try:
            async with self.pool.sftp() as sftp, sftp.open(path, "rb") as f:
                data = await f.read()
        except asyncssh.SFTPNoSuchFile:
            return None
        except asyncssh.SFTPError as exc:
            raise CommandFailed(f"sftp read {path} on {self.label}: {exc.reason}") from None
        return bytes(data)

    async def write_file(self, path: str, data: bytes) -> None:
        head, _, _ = path.rpartition("/")
        tmp = _tmp_name(path)
        try:
            async with self.pool.sftp() as sftp:
                if head:
                    await sftp.makedirs(head, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
                async with sftp.open(tmp, "wb", attrs=asyncssh.SFTPAttrs(permissions=0o600)) as f:
                    await f.write(data)
                await sftp.posix_rename(tmp, path)
        except asyncssh.SFTPError as exc:
            raise CommandFailed(f"sftp write {path} on {self.label}: {exc.reason}") from None

    async def remote_sha256(self, path: str) -> str:
        """The checksum computed on the host itself (so the bytes are read where they landed)."""
        result = await self.run(["sha256sum", "--", path], timeout=self._timeout)
        if result.returncode != 0:
            raise CommandFailed(f"sha256sum {path} on {self.label} exited {result.returncode}: {result.error_text()}")
        m = re.fullmatch(r"([0-9a-f]{64}) [ *]?.*\n?", result.text(), re.DOTALL)
        if m is None:
            raise CommandFailed(f"sha256sum on {self.label}: unexpected output {result.text()[:200]!r}")
        return f"sha256:{m[1]}"

    async def put(self, local_path: Path, site_path: str) -> str:
        """Upload to a temporary name, compare the host's checksum with ours, rename into place.

        Missing directories on the way are created, as a put on the local site does.
        """
        want = await asyncio.to_thread(sha256_file, local_path)
        head = site_path.rpartition("/")[0]
        tmp = _tmp_name(site_path)
        try:
            async with self.pool.sftp() as sftp:
                if head:
                    await sftp.makedirs(head, exist_ok=True)
                await sftp.put(str(local_path), tmp)
            got = await self.remote_sha256(tmp)
            if got != want:
                raise CommandFailed(f"checksum mismatch after put to {self.label}:{site_path}: sent {want}, got {got}")
            async with self.pool.sftp() as sftp:
                await sftp.posix_rename(tmp, site_path)
        except asyncssh.SFTPError as exc:
            raise CommandFailed(f"sftp put {site_path} on {self.label}: {exc.reason}") from None
        finally:
            with contextlib.suppress(Exception):
                await self.run(["rm", "-f", "--", tmp], timeout=self._timeout)
        return want

    async def get(self, site_path: str, local_path: Path) -> str:
        """Download to a temporary name, compare with the host's checksum, rename into place."""
        want = await self.remote_sha256(site_path)
        tmp = local_path.with_name(f".{local_path.name}.lwfm-tmp")
        await asyncio.to_thread(local_path.parent.mkdir, parents=True, exist_ok=True)  # as the local site's get
        try:
            async with self.pool.sftp() as sftp:
                await sftp.get(site_path, str(tmp))
            got = await asyncio.to_thread(sha256_file, tmp)
            if got != want:
                raise CommandFailed(f"checksum mismatch after get from {self.label}:{site_path}: {want} != {got}")
            tmp.replace(local_path)
        except asyncssh.SFTPError as exc:
            raise CommandFailed(f"sftp get {site_path} on {self.label}: {exc.reason}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return want


def _tmp_name(site_path: str) -> str:
    head, _, name = site_path.rpartition("/")
    tmp = f".{name}.lwfm-tmp"
    return f"{head}/{tmp}" if head else tmp


def _describe(exc: BaseException) -> str:
    """What went wrong with a connection, in words (asyncssh's reason, the OS error's meaning)."""
    if isinstance(exc, asyncssh.Error):
        return exc.reason or "the connection failed"
    return plain_error(exc)


def _host_key_message(host: str, port: int, known_hosts: Path, exc: asyncssh.HostKeyNotVerifiable) -> str:
    """Say whether the key is unknown or has changed: the second may be an attack."""
    try:
        trusted = asyncssh.read_known_hosts(str(known_hosts)).match(host, "", port)[0]
    except (OSError, ValueError, asyncssh.Error):
        trusted = []
    where = host if port == 22 else f"[{host}]:{port}"
    if trusted:
        return (
            f"host key of {where} has CHANGED: it does not match {known_hosts}; refusing to connect "
            f"(this may be an attack; if the server's key really changed, verify the new one out of band "
            f"and replace its entry) [{exc.reason}]"
        )
    return (
        f"host key of {where} is unknown: no entry in {known_hosts}; refusing to connect "
        f"(verify the server's key out of band and add it, e.g. from ssh-keyscan -p {port} {host}) [{exc.reason}]"
    )


# ---------------------------------------------------------------------- sharing between sites

_pools: dict[tuple[int, SshTarget], tuple[SshPool, int]] = {}


def acquire_pool(target: SshTarget) -> SshPool:
    """The pool for ``target`` on this event loop (created on first use, reference-counted)."""
    key = (id(asyncio.get_running_loop()), target)
    pool, users = _pools.get(key, (None, 0))
    if pool is None:
        pool = SshPool(target)
    _pools[key] = (pool, users + 1)
    return pool


async def release_pool(pool: SshPool) -> None:
    """Give a pool back; the last user closes its connection."""
    key = (id(asyncio.get_running_loop()), pool.target)
    found, users = _pools.get(key, (None, 0))
    if found is not pool:
        await pool.close()
        return
    if users <= 1:
        del _pools[key]
        await pool.close()
    else:
        _pools[key] = (pool, users - 1)
