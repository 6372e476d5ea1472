"""Installer subprocesses: run one step, stop it and everything it started, and keep credentials out of sight.

A build may be stopped at any moment (a cancelled job's SIGTERM, an exception), and :mod:`lwfm_bus._pyenv` then
removes its directory.  That is only safe once no process of the build is left to write into it again, hence:

* every step runs in a process group of its own: ``venv`` runs ``ensurepip``, pip and uv run builds, and a step
  stopped half-way is killed with its whole group, waiting until the group is gone;
* a termination signal that arrives while a step is being started waits until its process exists: raised
  inside ``Popen``'s constructor it would leave the step running unknown to us.  :func:`terminate_on_signal`
  is the handler that knows to wait.

An index URL may carry a token, so credentials are redacted from what leaves a step: its output, which ends up
in the job's log, and the installer arguments the manifest records, which whoever lists environments can read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ._errors import EnvBuildError

__all__ = ["terminate_on_signal"]

_TAIL_LINES = 60
# Variables that would send pip's files elsewhere or make it see packages outside the environment.
_INSTALLER_UNSET = ("PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PYTHONHOME", "PYTHONPATH")


def _redact(arg: str) -> str:
    # An index URL may carry a token; the manifest is readable by whoever lists environments.
    parts = urlsplit(arg)
    if "@" not in parts.netloc:
        return arg
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@]+@")


def _redact_text(text: str) -> str:
    """Credentials in any URL of an installer's output, which ends up in the job's log."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


# While an installer step is being started, a termination signal must wait: raised inside
# Popen's constructor it would leave the step running unknown to us (it then writes the
# environment's directory after we removed it).  Deferred, it is raised once the step's
# process exists, where stopping the build kills it.
_spawning = False
_deferred: int | None = None


def terminate_on_signal(signum: int, frame: object) -> None:
    """A SIGTERM handler for a process that builds environments: exit 128+signum, cleanly.

    The build is stopped and its directory removed (see :func:`lwfm_bus._pyenv._build`).
    """
    global _deferred
    if _spawning:
        _deferred = signum
        return
    raise SystemExit(128 + signum)


def _start(argv: list[str], env: dict[str, str], cwd: Path | None) -> subprocess.Popen[str]:
    global _spawning, _deferred
    _spawning = True
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        _spawning = False


def _raise_deferred() -> None:
    global _deferred
    signum, _deferred = _deferred, None
    if signum is not None:
        raise SystemExit(128 + signum)


class _StepFailed(EnvBuildError):
    """An installer step exited non-zero (or was killed: a negative ``returncode``)."""

    def __init__(self, message: str, output: list[str], returncode: int) -> None:
        super().__init__(message, output)
        self.returncode = returncode


def _run(argv: list[str], headline: str, *, cwd: Path | None = None, extra: Mapping[str, str] | None = None) -> str:
    """Run an installer step; on failure raise with its last error line and the tail of its output."""
    env = {k: v for k, v in os.environ.items() if k not in _INSTALLER_UNSET}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **(extra or {}))
    # Its own process group: a step starts processes of its own (venv runs ensurepip, pip runs
    # builds), and a build stopped half-way must stop them all before its directory is removed,
    # or they write into it again after the removal.
    with _start(argv, env, cwd) as proc:
        try:
            _raise_deferred()  # a signal that came while it was being started
            stdout, stderr = proc.communicate()
        except BaseException:
            _stop_group(proc)
            raise
    if proc.returncode == 0:
        return stdout
    lines = [_redact_text(line) for line in (stderr or stdout).splitlines() if line.strip()]
    # pip marks its diagnosis "ERROR:"; uv ends with its deepest "cause:", the most specific line.
    errors = [line for line in lines if line.startswith("ERROR:")]
    last = (errors or lines or [f"exit status {proc.returncode}"])[-1].strip()
    last = re.sub(r"^(ERROR|error|cause):\s*", "", last)
    raise _StepFailed(f"{headline}: {last}", lines[-_TAIL_LINES:], proc.returncode)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Kill an installer step and every process it started; return once they are all gone (at most 10 s)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # a member of the group is still there (not yet reaped by init)
        except ProcessLookupError:
            return
        time.sleep(0.01)
