"""Starting the singleton in the background when a laptop user has not started it.

A plain script that submits a job and exits must see that job run (the seeds' use
cases 3b and 3c, as written): with nothing running for its home, ``connect()``
starts ``lwfm-bus up`` -- server, trigger engine and the local site's agent -- as a
detached process that outlives the script, says so on stderr, and waits until it is
ready.  ``lwfm-bus down`` stops it.

Readiness is a line on a pipe: the child writes it once everything is serving, or
closes the pipe by dying, so the parent never guesses with a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from .._config import BusConfig
from .._errors import ServerStartError

__all__ = ["READY_LINE", "start_background", "stop_background", "up_record"]

READY_LINE = b"ready\n"
_READY_TIMEOUT_S = 60.0


def _log_path(home: Path) -> Path:
    return home / "up.log"


def _command(config: BusConfig, ready_fd: int) -> list[str]:
    cmd = [sys.executable, "-m", "lwfm_bus", "--home", str(config.home)]
    if config.site != "local":
        cmd += ["--site", config.site]
    if config.federation_file is not None:
        cmd += ["--federation", str(config.federation_file.absolute())]
    return [*cmd, "up", "--ready-fd", str(ready_fd)]


def _environment(config: BusConfig) -> dict[str, str]:
    env = dict(os.environ)
    # The child is the whole singleton: it decides its own engine and agents.
    for key in ("LWFM_BUS_URL", "LWFM_BUS_AGENTS", "LWFM_BUS_ENGINE", "LWFM_BUS_AUTOSTART"):
        env.pop(key, None)
    if config.sites_file is not None:
        env["LWFM_BUS_SITES"] = str(config.sites_file.absolute())
    if config.federation_secret_file is not None:
        env["LWFM_BUS_FEDERATION_SECRET"] = str(config.federation_secret_file.absolute())
    return env


def start_background(config: BusConfig) -> int:
    """Start ``lwfm-bus up`` for ``config.home`` detached; return its pid once it is ready.

    The caller holds the home's start lock, so two processes never start two.
    """
    config = config.model_copy(update={"home": config.home.absolute()})  # the child runs from another directory
    home = config.home
    home.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    try:
        with open(_log_path(home), "ab") as log:
            proc = subprocess.Popen(
                _command(config, write_end),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_environment(config),
                cwd=home,
                start_new_session=True,  # not in the caller's process group: Ctrl-C there leaves it running
                pass_fds=(write_end,),
            )
        os.close(write_end)
        write_end = -1
        got = _read_ready(read_end, _READY_TIMEOUT_S)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if got != READY_LINE:
        _stop_group(proc)
        tail = _tail(_log_path(home))
        raise ServerStartError(f"the background bus for {home} did not start (log {_log_path(home)}): {tail}")
    # Disowned: it is meant to outlive us, and nobody here will wait for it (subprocess
    # would otherwise warn, when the Popen object goes, that it is "still running").
    proc.returncode = 0
    return proc.pid


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child that never became ready, and its nats-server (same process group): never leave
    a server holding the store for the next start to trip over."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_ready(fd: int, timeout: float) -> bytes:
    """What the child writes before it closes the pipe, or dies, or the timeout passes."""
    deadline = time.monotonic() + timeout
    got = b""
    while READY_LINE not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break  # the child closed it: it died
        got += chunk
    return got


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "empty log"


def up_record(home: Path) -> dict[str, object] | None:
    """``<home>/server.json`` as written by the running server, if there is one."""
    try:
        record = json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stop_background(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM the bus process ``pid`` and wait (bounded) for it to exit; True if it did."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.05)  # waiting for another process to exit: no pidfd for a non-child everywhere
    return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
