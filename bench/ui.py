"""The dashboard in a real headless chromium: a 10,000-job workflow page opening, and a burst of events.

Two figures, each against a baseline measured in the same run:

* **Open.** The workflow page of a workflow of N jobs (10,000; 1,000 with ``--quick``),
  from ``page.goto`` until the job count says N and the first job's row is drawn.
  Baseline: the same document (``/api/workflows/W``, every job) fetched and parsed as JSON
  by a plain HTTP client, i.e. what the page cannot go below.  Target (issue 18): <= 1 s.
* **Keep up.** With the page open, a burst of M events (5,000; 1,000 with ``--quick``)
  published as fast as the server takes them.  The page's rate is M over the time from
  the first publish until it has applied the last one (its events counter); the baseline
  is the raw publish rate, so a ratio near 1 means the page keeps up with the bus itself.
  The lag after the last publish is reported too.  Target: >= 1,000 events/s.

Needs Playwright (the ``dev`` extra) and Debian's ``chromium`` (``scripts/system-deps.sh``);
without them both figures are reported as not available, with why.  Never ``playwright install``.

    .venv/bin/python -m bench --only ui [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio

import lwfm_bus as lb
from bench._common import Figure, bench_bus, bulk_publish, figure, log, scaled

ITEM = "ui"
OPEN_TARGET_S = 1.0
RATE_TARGET = 1000.0


def _missing() -> str | None:
    """Why the benchmark cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev]')"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (scripts/system-deps.sh installs it)"
    return None


def _fetch_json(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:
        return len(json.loads(response.read())["jobs"])


def _status(job_id: str, workflow_id: str, state: lb.JobState) -> lb.Event:
    data = lb.JobStatus(job_id=job_id, site="local", state=state, workflow_id=workflow_id, name=f"job {job_id}")
    return lb.make_event(data, source="/bench/ui")


async def _wait_count(page: Any, selector: str, count: int, timeout_s: float) -> None:
    script = f"document.querySelector({json.dumps(selector)})?.dataset.count === {json.dumps(str(count))}"
    await page.wait_for_function(script, polling="raf", timeout=scaled(timeout_s) * 1000)


async def run(quick: bool, tmp: Path) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from lwfm_bus._ui import UiSettings, serve_ui

    n_jobs, burst, runs = (1_000, 1_000, 1) if quick else (10_000, 5_000, 3)
    out: dict[str, Any] = {"jobs": n_jobs, "burst": burst, "runs": runs}
    async with bench_bus(tmp, agents=()) as (_server, bus), anyio.create_task_group() as tg:
        wf = await bus.define_workflow("bench-ui")
        await bulk_publish(bus, (_status(f"j{i:05d}", wf.workflow_id, lb.JobState.COMPLETE) for i in range(n_jobs)))
        with anyio.fail_after(scaled(120)):
            indexed = len(await bus.jobs(workflow=wf, limit=None))
        assert indexed == n_jobs, f"the index holds {indexed} of {n_jobs} jobs"
        url: str = await tg.start(serve_ui, bus, UiSettings(port=0))
        api = f"{url}api/workflows/{wf.workflow_id}"
        fetches = []
        for i in range(runs + 1):  # the first of each is a warm-up (the map cache, bytecode, the page's modules)
            t0 = time.perf_counter()
            got = await anyio.to_thread.run_sync(_fetch_json, api)
            if i:
                fetches.append(time.perf_counter() - t0)
            assert got == n_jobs
        log(f"JSON of {n_jobs} jobs: {[round(x, 3) for x in fetches]} s")
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=args)
            try:
                # bypass_csp: the page's policy forbids eval, which wait_for_function's predicate needs.
                page = await browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
                opens = []
                for i in range(runs + 1):
                    await page.goto("about:blank")
                    t0 = time.perf_counter()
                    await page.goto(f"{url}#/workflow/{wf.workflow_id}")
                    await _wait_count(page, "#job-count", n_jobs, 60)
                    await page.locator('#job-rows .vrow[data-job="j00000"]').wait_for(timeout=scaled(60) * 1000)
                    if i:
                        opens.append(time.perf_counter() - t0)
                log(f"page of {n_jobs} jobs opened in {[round(x, 3) for x in opens]} s")
                # The burst: the page is open and current (every event of the workflow applied).
                await _wait_count(page, "#wf-events", n_jobs + 1, 60)  # the jobs and the workflow's definition
                t0 = time.perf_counter()
                await bulk_publish(
                    bus, (_status(f"b{i:05d}", wf.workflow_id, lb.JobState.RUNNING) for i in range(burst)), window=500
                )
                published = time.perf_counter() - t0
                await _wait_count(page, "#wf-events", n_jobs + 1 + burst, 120)
                caught_up = time.perf_counter() - t0
                await _wait_count(page, "#job-count", n_jobs + burst, 30)
                duplicates = await page.evaluate("window.lwfmLive.duplicates")
                assert duplicates == 0, f"the page applied {duplicates} events twice"
            finally:
                await browser.close()
        tg.cancel_scope.cancel()
    out.update(
        fetch_s=[round(x, 4) for x in fetches],
        open_s=[round(x, 4) for x in opens],
        fetch_median_s=statistics.median(fetches),
        open_median_s=statistics.median(opens),
        publish_s=round(published, 4),
        caught_up_s=round(caught_up, 4),
        publish_rate=burst / published,
        page_rate=burst / caught_up,
        lag_s=round(caught_up - published, 4),
    )
    return out


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    open_name = "dashboard: workflow page of 10 k jobs opens (rows drawn, count shown)"
    rate_name = "dashboard: workflow page applies a burst of events"
    why = _missing()
    if why is not None:
        log(f"skipped: {why}")
        skipped = [
            figure(ITEM, open_name, None, "s", target=("value", "<=", OPEN_TARGET_S), note=why),
            figure(ITEM, rate_name, None, "events/s", target=("value", ">=", RATE_TARGET), note=why),
        ]
        for fig in skipped:
            fig["status"] = "n/a"  # not measured here: reported with why, never a crash
        return skipped, {"skipped": why}
    r = asyncio.run(run(quick, tmp))
    n, m = r["jobs"], r["burst"]
    open_s, fetch_s = r["open_median_s"], r["fetch_median_s"]
    figs = [
        figure(
            ITEM, open_name.replace("10 k", f"{n:,}"), round(open_s, 3), "s",
            target=("value", "<=", OPEN_TARGET_S), baseline=round(fetch_s, 3),
            baseline_label="(the same jobs fetched as JSON by a plain HTTP client)",
            ratio=round(open_s / fetch_s, 2), ratio_label="of the JSON fetch", quick=quick,
            note=f"median of {r['runs']} after a warm-up; slowest {max(r['open_s']):.2f} s",
        ),
        figure(
            ITEM, f"{rate_name} ({m:,} events; lag after the last publish {r['lag_s']:.2f} s)",
            round(r["page_rate"]), "events/s", target=("value", ">=", RATE_TARGET),
            baseline=round(r["publish_rate"]), baseline_label="(published to the bus, pipelined)",
            ratio=round(r["page_rate"] / r["publish_rate"], 2), ratio_label="of the publish rate", quick=quick,
        ),
    ]  # fmt: skip
    return figs, r
