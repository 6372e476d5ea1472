"""Helpers for the dashboard tests: the dashboard served in the test's task, Debian's chromium
driven by Playwright, pipelines whose steps wait for a gate file, and screenshots under tmp_path.

Browsers are never downloaded (``playwright install`` is not reachable here): the tests drive the
``chromium`` that ``scripts/system-deps.sh`` installs, and skip, saying so, where it is missing.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import lwfm_bus as lb
from lwfm_bus._ui import UiSettings, serve_ui

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/system-deps.sh installs it)"
)


@asynccontextmanager
async def serving(bus: lb.Bus, settings: UiSettings | None = None) -> AsyncIterator[str]:
    """The dashboard over ``bus`` for the block (port 0 by default); yields its URL."""
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve_ui, bus, settings or UiSettings(port=0))
        try:
            yield url
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def browser_page(tmp_path: Path) -> AsyncIterator[object]:
    """A page of a fresh headless chromium; a dialog (an alert a hostile name forced) or an uncaught
    error in the page's script fails the test."""
    from playwright.async_api import async_playwright

    assert CHROMIUM is not None
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            dialogs: list[str] = []
            errors: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.dialogs = dialogs  # type: ignore[attr-defined]
            yield page
            assert not dialogs, f"the page opened a dialog: {dialogs}"
            assert not errors, f"the page's script failed: {errors}"
        finally:
            await browser.close()


def gated_pipeline(tmp_path: Path, name: str = "gated", runs: int = 3) -> tuple[Path, Path]:
    """A pipeline whose ``wait`` step (``runs`` at once) runs until a gate file exists, then ``after`` runs.

    Returns ``(pipeline file, gate file)``: the test opens the gate when it wants the run to go on.
    """
    gate = tmp_path / "GATE"
    script = tmp_path / "gate.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            while not os.path.exists(sys.argv[1]):
                time.sleep(0.05)  # the job waits for the test, not the other way round
            print("gate open")
            """
        )
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            pipeline: 1
            name: {name}
            steps:
              wait:
                parallel: {runs}
                run: python3 {script} {gate}
              after:
                after: wait
                run: python3 -c "print('after')"
            """
        )
    )
    return path, gate


async def shot(page: object, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot, kept as the test's artifact."""
    out = tmp_path / "screenshots" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(out), full_page=True)  # type: ignore[attr-defined]
    assert out.stat().st_size > 0
    return out


async def count_events(bus: lb.Bus, subject: str) -> int:
    """How many events match ``subject`` in the stream now."""
    n = 0
    async with bus.replay(subject) as events:
        async for _ in events:
            n += 1
    return n
