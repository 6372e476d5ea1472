"""The sites page in a real headless chromium: each site's health, and the federation pane at a hub.

Site health comes from ``lwfm.site.heartbeat`` events, which agents publish only when a site's
health changes; a site without one is "ok".  The federation test runs a hub and two leaves, three
real nats-servers on loopback (``tests/federation``), and opens the hub's dashboard.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import lwfm_bus as lb
from tests._helpers import wait_state
from tests.federation.test_federation import running_federation
from tests.ui._browser import browser_page, needs_chromium, serving, shot

pytestmark = [needs_chromium, pytest.mark.slow]

WAIT_MS = 60_000
REASON = "<b>cannot be opened</b>: host \u202eunreachable\x1b[2J"


def _beat(site: str, status: lb.SiteStatus, info: str | None = None) -> lb.Event:
    return lb.make_event(lb.SiteHeartbeat(site=site, adapter="ssh", status=status, info=info), source="/test")


async def test_a_site_is_ok_until_its_agent_reports_trouble_then_ok_again(bus: lb.Bus, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with serving(bus) as url, browser_page(tmp_path) as page:
        await page.goto(f"{url}#/sites")
        local = page.locator('#site-rows tr[data-site="local"]')
        await expect(local.locator(".health")).to_have_text("ok")  # no heartbeat: no trouble reported
        await bus.publish(_beat("cluster", lb.SiteStatus.DOWN, REASON))
        cluster = page.locator('#site-rows tr[data-site="cluster"]')
        await expect(cluster).to_have_attribute("data-health", "DOWN", timeout=WAIT_MS)
        health = cluster.locator(".health")
        await expect(health).to_contain_text("DOWN since ")
        await expect(health).to_contain_text(": <b>cannot be opened</b>: host \\u202eunreachable\\u001b[2J")
        assert await page.locator("#site-rows b").count() == 0
        await expect(local.locator(".health")).to_have_text("ok")
        await shot(page, tmp_path, "sites-down")
        await bus.publish(_beat("cluster", lb.SiteStatus.DEGRADED, "squeue does not answer"))
        await expect(cluster).to_have_attribute("data-health", "DEGRADED", timeout=WAIT_MS)
        await expect(health).to_contain_text(": squeue does not answer")
        await bus.publish(_beat("cluster", lb.SiteStatus.UP))  # recovered
        await expect(cluster).to_have_attribute("data-health", "ok", timeout=WAIT_MS)
        await expect(health).to_have_text("ok")
    assert (await bus.site_health())["cluster"].data.status is lb.SiteStatus.UP


async def test_the_hubs_dashboard_shows_every_site_and_a_leafs_jobs(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_federation(tmp_path) as federation:
        hub, beta = federation["hub"], federation["beta"]
        job = await beta.submit(lb.JobDefn.of([sys.executable, "-c", "pass"], name="<i>leaf job</i>"), site="beta")
        await wait_state(hub, job.job_id, lb.JobState.COMPLETE, timeout=60)  # sourced by the hub's stream
        async with serving(hub) as url, browser_page(tmp_path) as page:
            await page.goto(f"{url}#/sites")
            await expect(page.locator("#fed-note")).to_contain_text("This bus is the hub (site hub)")
            row = page.locator('#fed-rows tr[data-site="beta"]')
            await expect(row).to_have_attribute("data-role", "leaf")
            await expect(row.locator('[data-from="sourced"]')).to_contain_text("sourced from beta")
            await expect(row.locator('.chip[data-state="COMPLETE"]')).to_have_text("COMPLETE 1")
            leaf_job = row.locator(f'li[data-job="{job.job_id}"]')
            await expect(leaf_job).to_contain_text("<i>leaf job</i> COMPLETE")
            assert await page.locator("#fed-rows i").count() == 0
            await expect(page.locator('#fed-rows tr[data-site="hub"] [data-from="here"]')).to_have_text("this bus")
            await expect(page.locator('#fed-rows tr[data-site="alpha"]')).to_have_attribute("data-role", "leaf")
            await expect(page.locator('#fed-rows tr[data-site="alpha-hpc"]')).to_have_attribute("data-role", "leaf")
            await expect(page.locator('#fed-rows tr[data-site="local"]')).to_have_count(0)  # not a member's name
            await shot(page, tmp_path, "sites-federation")
            # A new job on the other leaf appears in the pane live, from the hub's stream.
            other = await federation["alpha"].submit(
                lb.JobDefn.of([sys.executable, "-c", "pass"], name="a"), site="alpha"
            )
            alpha = page.locator('#fed-rows tr[data-site="alpha"]')
            await expect(alpha.locator(f'li[data-job="{other.job_id}"]')).to_contain_text("COMPLETE", timeout=WAIT_MS)
            await leaf_job.locator("a").click()
            await expect(page.locator("#job-state")).to_have_text("COMPLETE")
