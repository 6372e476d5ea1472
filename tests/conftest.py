"""Shared fixtures: the shipped plugin, and a guard that no background bus outlives its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lwfm_bus._autostart import stop_background, up_record

pytest_plugins = ["lwfm_bus.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _stop_background_buses(tmp_path: Path) -> Iterator[None]:
    """A test that let ``connect()`` start ``lwfm-bus up`` in the background stops it afterwards."""
    yield
    for record_path in tmp_path.rglob("server.json"):
        record = up_record(record_path.parent)
        pid = record.get("owner_pid") if record else None
        if isinstance(pid, int):
            stop_background(pid, timeout=30)
