"""Secrets on an ``ssh`` site (issue 20, item 3): the agent resolves, the job's 0600 env file carries the value.

A real OpenSSH server on loopback (tests/sites/_sshd.py) and a real bus.  The job proves
it received the value by printing its sha256; the value it also prints is redacted when
read through ``Bus.logs`` from the agent's home, and no stream or local file holds it.
"""

from __future__ import annotations

import hashlib
import secrets

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._eventbus import STREAM, SUBMIT_STREAM
from lwfm_bus._secrets import SecretStore
from tests._helpers import raw_stream
from tests.sites._sshd import SshServer
from tests.sites.test_ssh_site import rbus, sshd

__all__ = ["rbus", "sshd"]  # the fixtures, re-exported for pytest


async def _raw(bus: lb.Bus, stream: str) -> bytes:
    return b"\n".join(await raw_stream(bus, stream))


async def test_a_remote_job_gets_its_secret_through_its_env_file(
    rbus: lb.Bus, sshd: SshServer, bus_config: lb.BusConfig
) -> None:
    marker = secrets.token_hex(16)
    SecretStore(bus_config.home, "remote").set("REMOTE_TOKEN", marker)
    script = 'printf "%s" "$T" | sha256sum | cut -c1-64; echo "argv=$1 env=$T"'
    defn = lb.JobDefn.of(["/bin/sh", "-c", script, "sh", "secret:REMOTE_TOKEN"], env={"T": "secret:REMOTE_TOKEN"})
    job = await rbus.submit(defn, site="remote")
    final = await job.wait(timeout=60)
    assert final.state is JobState.COMPLETE, final.native_info
    out = (await job.logs("stdout")).decode()
    assert out == f"{hashlib.sha256(marker.encode()).hexdigest()}\nargv=*** env=***\n"
    raw = await _raw(rbus, STREAM) + await _raw(rbus, SUBMIT_STREAM)
    assert b"secret:REMOTE_TOKEN" in raw and marker.encode() not in raw
    home = bus_config.home
    leaks = [
        p for p in home.rglob("*")
        if p.is_file() and (home / "secrets") not in p.parents and marker.encode() in p.read_bytes()
    ]  # fmt: skip
    assert leaks == []


async def test_a_secret_missing_for_a_remote_site_fails_the_job(rbus: lb.Bus) -> None:
    job = await rbus.submit(lb.JobDefn.of(["true"], env={"T": "secret:NOWHERE"}), site="remote")
    final = await job.wait(timeout=60)
    assert (final.state, final.native_state) == (JobState.FAILED, "secret-missing")
    assert final.native_info is not None and "'NOWHERE' is not set at site 'remote'" in final.native_info
