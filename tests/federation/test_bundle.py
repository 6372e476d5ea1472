"""Offline transfer (use case 1f): export on one bus, import on another -- two real servers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus.testing import bus_config_for, hold_connection, start_test_server
from tests._helpers import cli_env

CLI = [sys.executable, "-m", "lwfm_bus"]


@pytest_asyncio.fixture
async def far(tmp_path: Path) -> AsyncIterator[lb.Bus]:
    """A second bus on its own server: the site with no live link to the first."""
    async with start_test_server(tmp_path / "far-nats") as server:
        async with hold_connection(bus_config_for(server, tmp_path / "far-home")) as bus:
            yield bus


async def _last_seq(bus: lb.Bus) -> int:
    info = await bus.jetstream.stream_info("LWFM")
    return int(info.state.last_seq)


async def _workflow_with_data(bus: lb.Bus) -> tuple[lb.Workflow, list[str], str]:
    wf = await bus.define_workflow("offline")
    jobs = []
    for step in ("a", "b"):
        job = await bus.submit(lb.JobDefn.of(["true"], name=step), workflow=wf)
        await job.wait(timeout=30)
        jobs.append(job.job_id)
    record = await bus.notate(
        "/results/out.h5", {"kind": "result", "step": 2}, job=lb.JobContext(job_id=jobs[1], workflow_id=wf.workflow_id)
    )
    await bus.submit(lb.JobDefn.of(["true"]))  # not in the workflow: not exported
    return wf, jobs, record.data_id


async def test_a_workflow_exported_here_is_whole_there_and_a_second_import_changes_nothing(
    bus: lb.Bus, far: lb.Bus, tmp_path: Path
) -> None:
    wf, jobs, data_id = await _workflow_with_data(bus)
    bundle = tmp_path / "wf.bundle"
    count = await bus.export_bundle(bundle, workflow=wf)
    assert count > 0

    report = await far.import_bundle(bundle)
    assert (report.events, report.published, report.already) == (count, count, 0)
    assert [j.job_id for j in await far.jobs(workflow=wf.workflow_id)] == jobs
    assert all(j.state is JobState.COMPLETE for j in await far.jobs(workflow=wf.workflow_id))
    assert (await far.data(data_id)).metadata == {"kind": "result", "step": 2}
    assert (await far.workflow(wf.workflow_id)) is not None

    before = await _last_seq(far)
    again = await far.import_bundle(bundle)
    assert (again.published, again.already) == (0, count)  # the ledger, not only the duplicate window
    assert await _last_seq(far) == before


@pytest.mark.parametrize("damage", ["truncate-mid-line", "drop-trailer", "flip-a-byte", "drop-an-event", "garbage"])
async def test_a_damaged_bundle_is_refused_whole(bus: lb.Bus, far: lb.Bus, tmp_path: Path, damage: str) -> None:
    wf, _, _ = await _workflow_with_data(bus)
    bundle = tmp_path / "wf.bundle"
    await bus.export_bundle(bundle, workflow=wf)
    raw = bundle.read_bytes()
    lines = raw.split(b"\n")
    if damage == "truncate-mid-line":
        raw = raw[: len(raw) // 2]
    elif damage == "drop-trailer":
        raw = b"\n".join(lines[:-2]) + b"\n"
    elif damage == "flip-a-byte":
        i = raw.index(b'"COMPLETE"') + 2
        raw = raw[:i] + b"X" + raw[i + 1 :]
    elif damage == "drop-an-event":
        raw = b"\n".join(lines[:2] + lines[3:])
    else:
        raw = b"not a bundle\n" + raw
    bundle.write_bytes(raw)
    before = await _last_seq(far)
    with pytest.raises(lb.BundleError, match=r"truncated|SHA-256|counts|header|line"):
        await far.import_bundle(bundle)
    assert await _last_seq(far) == before  # nothing half-imported


async def test_imported_events_fire_triggers(bus: lb.Bus, far: lb.Bus, tmp_path: Path) -> None:
    marker = tmp_path / "fired-there"
    async with lb.serve_engine(far, lb.EngineConfig(ack_wait_s=2)):
        trigger = await far.set_data_trigger(lb.JobDefn.of(["touch", str(marker)]), {"kind": "result"})
        await bus.notate("/results/x", {"kind": "result"})
        bundle = tmp_path / "all.bundle"
        await bus.export_bundle(bundle)
        await far.import_bundle(bundle)

        async def fired() -> str:
            async with far.subscribe(f"lwfm.*.trigger.*.{trigger.trigger_id}.fired", from_start=True) as events:
                async for event in events:
                    assert isinstance(event, lb.TriggerFiredEvent) and event.data.downstream_job_id
                    return event.data.downstream_job_id
            raise AssertionError("a followed subscription ended")  # pragma: no cover

        job_id = await asyncio.wait_for(fired(), 30)
        assert (await far.wait(job_id, timeout=30)).state is JobState.COMPLETE
    assert marker.exists()


async def test_export_since_a_sequence_and_the_command_line(bus: lb.Bus, far: lb.Bus, tmp_path: Path) -> None:
    await bus.notate("/early", {"n": 1})
    later = await bus.notate("/late", {"n": 2})
    bundle = tmp_path / "since.bundle"
    env = cli_env()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(bus.config.home), "--url", bus.config.servers[0],
        "export", "-o", str(bundle), "--since-seq", str(later.seq),
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    header = json.loads(bundle.read_bytes().split(b"\n")[0])
    assert (header["format"], header["version"], header["since_seq"]) == ("lwfm-bus-bundle", 1, later.seq)

    proc = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(far.config.home), "--url", far.config.servers[0], "import", str(bundle),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "1 events: 1 imported, 0 already here"
    assert [r.location for r in (await far.find()).records] == ["/late"]
