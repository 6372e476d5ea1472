"""Shared fixtures: the shipped plugin, and a guard that no background bus outlives its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lwfm_bus._bus._autostart import stop_background, up_record
from tests._helpers import kill_processes_with

pytest_plugins = ["lwfm_bus.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _stop_background_buses(tmp_path: Path) -> Iterator[None]:
    """After each test: stop a bus ``connect()`` started in the background, and the test's jobs.

    A test that fails while its jobs wait (for a file that will never come) would leave
    them running, using CPU for the rest of the run: every process that runs as a job
    under this test's directory is killed.
    """
    yield
    for record_path in tmp_path.rglob("server.json"):
        record = up_record(record_path.parent)
        pid = record.get("owner_pid") if record else None
        if isinstance(pid, int):
            stop_background(pid, timeout=30)
    kill_processes_with(f"LWFM_JOB_DIR={tmp_path}/")
