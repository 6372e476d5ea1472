"""A site's health is published by its agent and shown where jobs wait (issue 22, item 5).

While a site could not be reached, ``status`` said PENDING with no hint; the only sign
was a WARNING on the stderr of whichever process ran the site's agent.  The dead site
here is real: a loopback port nobody listens on.
"""

from __future__ import annotations

import json
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus import JobState, SiteStatus
from lwfm_bus.testing import hold_connection
from tests._helpers import run_cli, site_health, site_health_changes, wait_state, write_sites
from tests.sites._sshd import free_port
from tests.sites.test_unreachable_sites import _Records, records

__all__ = ["records"]  # the fixture, re-exported for pytest

_WAIT_S = 30.0


def _dead_site(tmp_path: Path) -> dict[str, object]:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    return {"adapter": "ssh", "host": "127.0.0.1", "port": free_port(), "known_hosts": str(known_hosts)}


async def _cli(config: lb.BusConfig, *args: str) -> str:
    code, out, err = await run_cli(config, *args)
    assert code == 0, err
    return out


async def test_a_site_that_cannot_be_opened_is_down_with_why_where_its_jobs_wait(
    bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    sites = write_sites(tmp_path / "sites.toml", {"dead": _dead_site(tmp_path)})
    config = bus_config.model_copy(update={"sites_file": sites, "agents": ("*",)})
    async with hold_connection(config) as bus:
        down = await site_health(bus, "dead", SiteStatus.DOWN)
        assert down.data.info is not None and "cannot be opened" in down.data.info and "127.0.0.1" in down.data.info
        health = await bus.site_health()
        assert health["dead"].data.status is SiteStatus.DOWN
        assert "local" not in health  # healthy until said otherwise: a site that opened at once says nothing

        wf = await bus.define_workflow("waits")
        job = await bus.submit(lb.JobDefn.of(["true"]), site="dead", workflow=wf)
        await wait_state(bus, job.job_id, JobState.PENDING)
        overview = await _cli(config, "status")
        one = await _cli(config, "status", job.job_id)
        shown = await _cli(config, "workflow", "show", wf.workflow_id)
        as_json = json.loads(await _cli(config, "workflow", "show", wf.workflow_id, "--json"))
    for out in (overview, one):
        line = next(line for line in out.splitlines() if "site DOWN since" in line)
        assert "cannot be opened" in line, out
    assert "dead: 1 pending  [site DOWN since" in overview
    assert "  site dead: DOWN since" in shown
    assert as_json["sites"]["dead"]["status"] == "DOWN" and "cannot be opened" in as_json["sites"]["dead"]["info"]
    assert "local" not in overview  # a healthy site with nothing to do is not listed


async def test_a_change_is_published_once(bus_config: lb.BusConfig, tmp_path: Path, records: _Records) -> None:
    """The agent tries the open again and again; the health event is not repeated."""
    sites = write_sites(tmp_path / "sites.toml", {"dead": _dead_site(tmp_path)})
    config = bus_config.model_copy(update={"sites_file": sites, "agents": ("*",)})
    async with hold_connection(config) as bus:
        await site_health(bus, "dead", SiteStatus.DOWN)
        await records.wait_for(lambda r: "still cannot be opened" in r.getMessage(), _WAIT_S)  # a later try
        assert await site_health_changes(bus, "dead") == [SiteStatus.DOWN]
