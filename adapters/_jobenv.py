"""The environment a remote job starts with: who it is, how it reaches the bus, its home there.

It travels as a file in the job's directory, created with mode 0600 and sourced by the
job's wrapper -- never on a command line, where ``ps`` on a shared login node would
show the bus credentials to everyone.  Every value is quoted with :func:`shlex.quote`
and every name checked, so sourcing the file cannot run anything.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from lwfm_bus import JobContext, JobDefn, SiteRuntime, identity_env

__all__ = ["BusReach", "env_file", "job_environment"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_CREDENTIALS = frozenset(
    {
        "LWFM_BUS_USER",
        "LWFM_BUS_PASSWORD",
        "LWFM_BUS_TOKEN",
        "LWFM_BUS_CREDS",
        "LWFM_BUS_TLS_CA",
        "LWFM_BUS_TLS_CERT",
        "LWFM_BUS_TLS_KEY",
    }
)


class BusReach(BaseModel):
    """Options shared by the remote adapters: can a job reach the bus, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    callback: bool = Field(
        default=False,
        description="Jobs reach the bus and report their own start and end (needs lwfm-bus on the site); "
        "the adapter then only checks them every callback_poll_s, for what a job cannot report "
        "(killed, timed out, cancelled).",
    )
    callback_poll_s: float = Field(default=60.0, gt=0, description="Safety-net poll interval in callback mode.")
    python: str = Field(
        default="python3",
        pattern=r"^[^\x00\n]{1,4096}$",
        description="Python with lwfm-bus installed, on the site (callback mode).",
    )
    bus_url: str | None = Field(
        default=None,
        pattern=r"^[^\s,]+(,[^\s,]+)*$",
        description="LWFM_BUS_URL as seen from the site (default: the one this process uses).",
    )
    forward_credentials: bool = Field(default=True, description="Give jobs the bus credentials (LWFM_BUS_*).")
    bus_home: str | None = Field(
        default=None,
        pattern=r"^[^\x00\n]{1,4096}$",
        description="LWFM_BUS_HOME of the site's jobs, a directory on the site (relative: to the login "
        "directory); created 0700 when the site opens.  Default: 'home' in the site's job directory root "
        "on a remote host; this process's own home for a slurm site without [ssh] (the same machine).",
    )


def job_environment(
    runtime: SiteRuntime, ctx: JobContext, defn: JobDefn, reach: BusReach, *, home: str | None
) -> dict[str, str]:
    """Bus address and credentials, then the job's own variables, then its identity (which wins).

    ``home`` is the job's ``LWFM_BUS_HOME`` on the site (absolute, resolved there), or None
    for the agent's own.  A remote job must never get this machine's home: the path means
    nothing there, or -- on a shared filesystem, as another user -- an index whose lock it
    may not take.  ``LWFM_JOB_DIR`` is set by the wrapper itself: only the site knows the
    absolute path.
    """
    env = {k: v for k, v in runtime.job_env.items() if reach.forward_credentials or k not in _CREDENTIALS}
    if reach.bus_url:
        env["LWFM_BUS_URL"] = reach.bus_url
    if home is not None:
        env["LWFM_BUS_HOME"] = home
    env.update(defn.env)
    env.update(identity_env(ctx))
    env.update(
        {
            "LWFM_CALLBACK": "1" if reach.callback else "0",
            "LWFM_PYTHON": reach.python,
        }
    )
    return env


def env_file(env: Mapping[str, str]) -> bytes:
    """``NAME='value'`` lines for ``set -a; . file``: quoted, names checked."""
    lines = []
    for name, value in env.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if "\x00" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
        lines.append(f"{name}={shlex.quote(value)}\n")
    return "".join(lines).encode()
