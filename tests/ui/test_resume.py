"""Resuming a failed pipeline run from the dashboard (--allow-actions), in a real headless chromium.

The dashboard starts ``python -m lwfm_bus ... run FILE --set ... --resume W`` as a detached
process of its own; the page follows the resumed run through its live stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import pytest_asyncio

import lwfm_bus as lb
from lwfm_bus._config import BusConfig
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline
from lwfm_bus._ui import UiSettings
from lwfm_bus.testing import hold_connection
from tests.ui._browser import browser_page, needs_chromium, serving, shot
from tests.ui.test_serving import http

pytestmark = [needs_chromium, pytest.mark.slow]

WAIT_MS = 90_000


@pytest_asyncio.fixture
async def engine_bus(bus_config: BusConfig) -> AsyncIterator[lb.Bus]:
    async with hold_connection(bus_config.model_copy(update={"engine": "on"})) as connected:
        yield connected


def _flaky_pipeline(tmp_path: Path) -> tuple[Path, Path]:
    """``flaky`` fails until the flag file exists, then prints its param ``word``; ``after`` follows it."""
    flag = tmp_path / "FLAG"
    script = tmp_path / "flaky.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            if not os.path.exists(sys.argv[1]):
                sys.exit("no flag yet")
            print("word:", sys.argv[2])
            """
        )
    )
    path = tmp_path / "flaky.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            pipeline: 1
            name: flaky
            params:
              word: plain
            steps:
              flaky:
                run: python3 {script} {flag} {{params.word}}
              after:
                after: flaky
                run: python3 -c "print('after')"
            """
        )
    )
    return path, flag


async def test_resume_a_failed_run_from_the_page(engine_bus: lb.Bus, tmp_path: Path) -> None:
    from playwright.async_api import expect

    path, flag = _flaky_pipeline(tmp_path)
    report = await run_pipeline(engine_bus, load_pipeline(path, {"word": "<b>again</b>"}), lambda _: None,
                                overrides=["word=<b>again</b>"])  # fmt: skip
    assert not report.ok
    wf = report.workflow_id
    record = await engine_bus.workflow(wf)
    assert record is not None and record.properties["overrides"] == ["word=<b>again</b>"]
    first = {j.job_id: j.state for j in await engine_bus.jobs(workflow=wf)}
    assert lb.JobState.FAILED in first.values()
    flag.write_text("fixed")
    pid = 0
    try:
        async with serving(engine_bus, UiSettings(port=0, allow_actions=True)) as url, browser_page(tmp_path) as page:
            await page.goto(f"{url}#/workflow/{wf}")
            station = page.locator('#station-rows tr[data-station="flaky"]')
            await expect(station).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
            await page.click("#wf-resume")
            result = page.locator("#wf-resume-result")
            await expect(result).to_contain_text("resuming (process", timeout=WAIT_MS)
            pid = int(await result.get_attribute("data-pid") or 0)
            await expect(result).to_contain_text("--set word=<b>again</b> --resume")  # the run's own --set, as text
            await expect(station).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
            await expect(station.locator(".done")).to_have_text("1/1")
            after = page.locator('#station-rows tr[data-station="after"]')
            await expect(after).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
            assert await page.locator("#wf-resume-result b").count() == 0
            await shot(page, tmp_path, "workflow-resumed")
            # The map as the server draws it for a page opened now counts each step's latest attempt too.
            svg = json.loads((await http(f"{url}api/workflows/{wf}"))[2])["map"]["svg"]
            assert 'data-step="flaky" data-status="complete"' in svg
            # A second press while nothing is left to do is refused, in words.
            await _exited(pid)
            await page.click("#wf-resume")
            await expect(result).to_contain_text("refused: its last run completed")
    finally:
        if pid:
            _stop(pid)
    jobs = await engine_bus.jobs(workflow=wf)
    again = [j for j in jobs if j.job_id not in first]
    assert again and all(j.state is lb.JobState.COMPLETE for j in again)
    flaky = next(j for j in again if j.name == "flaky:flaky")
    assert "word: <b>again</b>" in (await engine_bus.logs(flaky.job_id, "stdout")).decode()
    logs = list((engine_bus.config.home / "ui").glob(f"resume-{wf}-*.log"))
    assert len(logs) == 1


async def _exited(pid: int) -> None:
    """Wait until the resumed run's process has ended (it ends once the run is complete)."""
    with anyio.fail_after(60):
        await anyio.to_thread.run_sync(_reap, pid, abandon_on_cancel=True)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # reaped already
        os.waitpid(pid, 0)


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended
        os.killpg(pid, signal.SIGTERM)


async def test_resume_is_refused_read_only_without_csrf_and_for_a_plain_workflow(bus: lb.Bus) -> None:
    wf = await bus.define_workflow("plain")
    resume = f"api/workflows/{wf.workflow_id}/resume"
    async with serving(bus) as url:
        assert (await http(url + resume, "POST"))[0] == 403  # read-only
    async with serving(bus, UiSettings(port=0, allow_actions=True)) as url:
        assert (await http(url + resume, "POST"))[0] == 403  # no CSRF token
        csrf = json.loads((await http(url + "api/session"))[2])["csrf"]
        status, _, body = await http(url + resume, "POST", {"x-csrf-token": csrf})
        assert status == 409
        assert "not a pipeline run" in json.loads(body)["error"]
        assert (await http(url + "api/workflows/nosuch/resume", "POST", {"x-csrf-token": csrf}))[0] == 404


def _cli(config: BusConfig, *argv: str) -> subprocess.CompletedProcess[str]:
    home = ["--home", str(config.home), "--url", config.servers[0]]
    return subprocess.run(
        [sys.executable, "-m", "lwfm_bus", *home, *argv], capture_output=True, text=True, timeout=120, check=False
    )


async def test_the_cli_resume_without_set_applies_the_runs_own(engine_bus: lb.Bus, tmp_path: Path) -> None:
    path, flag = _flaky_pipeline(tmp_path)
    config = engine_bus.config
    first = await anyio.to_thread.run_sync(lambda: _cli(config, "run", str(path), "--set", "word=stored"))
    assert first.returncode == 1, first.stderr
    wf = first.stdout.split("flaky (", 1)[1].split(")", 1)[0]
    flag.write_text("fixed")
    again = await anyio.to_thread.run_sync(lambda: _cli(config, "run", str(path), "--resume", wf))
    assert again.returncode == 0, again.stderr
    flaky = [
        j for j in await engine_bus.jobs(workflow=wf) if j.name == "flaky:flaky" and j.state is lb.JobState.COMPLETE
    ]
    assert len(flaky) == 1
    assert "word: stored" in (await engine_bus.logs(flaky[0].job_id, "stdout")).decode()
