"""Secrets across a federation (issue 20, item 3): the reference travels, the value stays at its site.

Hub, alpha and beta are three real nats-servers (the fixture of test_federation).  alpha
wires a job on beta that names ``secret:FED_TOKEN``; only beta's home holds the value.
The job must get it, and no stream of the three -- beta's submissions included -- may
hold it.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._eventbus import STREAM, SUBMIT_STREAM
from lwfm_bus._secrets import SecretStore
from tests._helpers import raw_stream, wait_state
from tests.federation.test_federation import running_federation


async def _raw(bus: lb.Bus, stream: str) -> bytes:
    return b"\n".join(await raw_stream(bus, stream))


async def test_a_federated_job_gets_its_sites_secret_and_no_stream_holds_it(tmp_path: Path) -> None:
    marker = secrets.token_hex(16)
    SecretStore(tmp_path / "beta-home", "beta").set("FED_TOKEN", marker)
    seen = tmp_path / "seen"
    write = f"import hashlib, os; open({str(seen)!r}, 'w').write(hashlib.sha256(os.environ['T'].encode()).hexdigest())"
    async with running_federation(tmp_path) as federation:
        hub, alpha, beta = federation["hub"], federation["alpha"], federation["beta"]
        upstream_id, downstream_id = lb.new_id(), lb.new_id()
        downstream = lb.JobDefn.of([sys.executable, "-c", write], env={"T": "secret:FED_TOKEN"}, name="b")
        await alpha.set_job_trigger(downstream, upstream_id, site="beta", job_id=downstream_id)
        await alpha.submit(lb.JobDefn.of([sys.executable, "-c", "pass"], name="a"), site="alpha", job_id=upstream_id)
        await wait_state(beta, downstream_id, JobState.COMPLETE, timeout=60)
        await wait_state(hub, downstream_id, JobState.COMPLETE, timeout=60)  # sourced to the hub too
        assert seen.read_text() == hashlib.sha256(marker.encode()).hexdigest()

        streams = {
            "hub": await _raw(hub, STREAM),
            "alpha": await _raw(alpha, STREAM),
            "beta": await _raw(beta, STREAM),
            "beta submissions": await _raw(beta, SUBMIT_STREAM),
        }
    assert b"secret:FED_TOKEN" in streams["hub"]  # the trigger and its job reached the hub, reference and all
    for name, raw in streams.items():
        assert marker.encode() not in raw, name
