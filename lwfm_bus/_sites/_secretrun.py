"""Run a local job's command with its secrets filled in, and its output redacted.

The local site writes a job's definition into its job directory (to adopt it after a
restart): given resolved values, it would keep them on disk.  So for the local site the
agent hands it the job as written, wrapped in this script::

    python .../_secretrun.py SPEC -- COMMAND...

``SPEC`` is JSON: the site's store directory, the site's name, which env variables
hold which reference, and the site config's ``secret_env`` (names only, never a value).
The script reads each value from the store (or the variable ``secret_env`` names, or
``LWFM_SECRET_<NAME>``, in its environment, the agent's), replaces the references in
the command and its environment, runs it, and copies its stdout and stderr to its own
with every value replaced by ``***``: the job's log files never hold them.  It takes the
job's signals as the job's: its command is in the same process group, which cancel and
time limits signal, so the script ignores them and ends with its command.

Run by path, not as ``-m lwfm_bus...``: it imports the standard library only, so a job
pays a bare interpreter start and not the package's imports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from typing import BinaryIO

_REFERENCE = re.compile(r"secret:([A-Za-z_][A-Za-z0-9_]{0,63})")
_ENV_PREFIX = "LWFM_SECRET_"
_MIN_REDACTED = 4  # keep in step with lwfm_bus._secrets.MIN_REDACTED
_MARK = b"***"
_MISSING = 1


def _value(name: str, store: str, variables: dict[str, str]) -> str | None:
    try:
        with open(os.path.join(store, name), "rb") as f:
            return f.read().decode()
    except FileNotFoundError:
        return os.environ.get(variables.get(name, _ENV_PREFIX + name))


class _Redactor:
    """Copies a stream, holding back only a tail that may be the start of a value."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = sorted(values, key=len, reverse=True)

    def pump(self, src: BinaryIO, dst_fd: int) -> None:
        carry = b""
        while True:
            chunk = os.read(src.fileno(), 65536)
            if not chunk:
                break
            data = self._replace(carry + chunk)
            keep = self._held(data)
            carry = data[len(data) - keep :] if keep else b""
            _write_all(dst_fd, data[: len(data) - keep])
        _write_all(dst_fd, carry)

    def _replace(self, data: bytes) -> bytes:
        for v in self.values:
            data = data.replace(v, _MARK)
        return data

    def _held(self, data: bytes) -> int:
        """The length of the longest tail of ``data`` that is a proper prefix of a value."""
        best = 0
        for v in self.values:
            for k in range(min(len(v) - 1, len(data)), best, -1):
                if data.endswith(v[:k]):
                    best = k
                    break
        return best


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BrokenPipeError:
            return
        data = data[n:]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("lwfm-bus: secret runner: usage: _secretrun.py SPEC -- COMMAND...", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    store, site, env_refs = str(spec["store"]), str(spec["site"]), dict(spec.get("env", {}))
    variables = {str(k): str(v) for k, v in dict(spec.get("vars", {})).items()}  # the site's secret_env
    command = argv[2:]
    names = {m.group(1) for w in command if (m := _REFERENCE.fullmatch(w))} | set(env_refs.values())
    values: dict[str, str] = {}
    for name in sorted(names):
        value = _value(name, store, variables)
        if value is None:
            # Removed since the agent looked: the same reason the agent gives, never a value.
            print(f"lwfm-bus: secret {name!r} is not set at site {site!r}", file=sys.stderr)
            return _MISSING
        values[name] = value
    command = [values[m.group(1)] if (m := _REFERENCE.fullmatch(w)) else w for w in command]
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIX) and k not in variables.values()}
    env.update({var: values[name] for var, name in env_refs.items()})
    redactor = _Redactor([v.encode() for v in values.values() if len(v) >= _MIN_REDACTED])
    # A handler, not SIG_IGN: handlers are reset at exec, so the command gets its signals as usual.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        # The program's name as written: a resolved value is never shown.
        print(f"lwfm-bus: cannot start {argv[2]}: {exc.strerror}", file=sys.stderr)
        return 127
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=redactor.pump, args=(proc.stdout, 1), daemon=True),
        threading.Thread(target=redactor.pump, args=(proc.stderr, 2), daemon=True),
    ]
    for t in pumps:
        t.start()
    rc = proc.wait()
    for t in pumps:
        t.join()
    if rc < 0:  # killed by a signal: die of it too, so the wrapper records what a shell would
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
