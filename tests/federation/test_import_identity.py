"""Importing a bundle starts nothing of the origin: only the importer's own triggers fire (issue 17).

Two homes, each with its own nats-server, engine and ``local`` agent -- both call their site
``local``.  Home 1 runs jobs and triggers, exports; home 2 imports.  An imported registration
is a fact about the origin, never a trigger of the importer: it must not fire at home 2, not
when its condition already holds there, not when it comes to hold later, not after an engine
restart.  Home 2's own triggers do fire on imported events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
import pytest_asyncio

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._bundle import bus_identity
from lwfm_bus._engine._feed import TriggerFeed
from lwfm_bus.testing import bus_config_for, hold_connection, start_test_server
from tests._helpers import wait_state

ORIGIN = "Lwfm-Origin"  # the header an imported event carries (README, "Offline transfer")


@pytest_asyncio.fixture
async def far(tmp_path: Path) -> AsyncIterator[lb.Bus]:
    """Home 2: its own server and home, running the ``local`` agent (its engine is started by each test)."""
    async with start_test_server(tmp_path / "far-nats") as server:
        async with hold_connection(bus_config_for(server, tmp_path / "far-home")) as bus:
            yield bus


def _appender(ran: Path, name: str) -> lb.JobDefn:
    """A job that appends the home it ran in to ``ran`` (a file both homes share)."""
    return lb.JobDefn.of(["sh", "-c", 'echo "$LWFM_BUS_HOME" >> "$0"', str(ran)], name=name)


async def _stored(bus: lb.Bus, subject: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Every message of the stream on ``subject`` (a filter), with its headers, in order."""
    found: list[tuple[dict[str, Any], dict[str, str]]] = []
    seq = 1
    while True:
        try:
            raw = await bus.jetstream.get_msg("LWFM", seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return found
        found.append((json.loads(raw.data or b"{}"), dict(raw.headers or {})))
        seq = int(raw.seq or 0) + 1


async def _own_firings(bus: lb.Bus) -> list[str]:
    """The triggers this bus fired itself: its ``fired`` events that did not come with an import."""
    fired = await _stored(bus, "lwfm.*.trigger.*.*.fired")
    return [str(event["data"]["trigger_id"]) for event, headers in fired if ORIGIN not in headers]


async def _submitted(bus: lb.Bus) -> set[str]:
    """The jobs this bus's agents were asked to run (its own submissions stream; never imported)."""
    info = await bus.jetstream.stream_info("LWFM_SUBMIT", subjects_filter="lwfm-submit.>")
    return {subject.rsplit(".", 1)[-1] for subject in (info.state.subjects or {})}


async def _fired(bus: lb.Bus, trigger_id: str, timeout: float = 30) -> lb.TriggerFired:
    async def scan() -> lb.TriggerFired:
        async with bus.subscribe(f"lwfm.*.trigger.*.{trigger_id}.fired", from_start=True) as events:
            async for event in events:
                assert isinstance(event, lb.TriggerFiredEvent)
                return event.data
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def test_an_import_reruns_nothing_and_only_the_importers_own_trigger_fires(
    bus: lb.Bus, far: lb.Bus, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.txt"
    a_id, b_id, c_id = lb.new_id(), lb.new_id(), lb.new_id()

    # Home 1: A -> B, to completion.
    async with lb.serve_engine(bus, lb.EngineConfig(ack_wait_s=2)):
        wf = await bus.define_workflow("origin")
        b = await bus.set_job_trigger(_appender(ran, "b"), a_id, job_id=b_id, workflow=wf)
        await bus.submit(lb.JobDefn.of(["true"], name="a"), workflow=wf, job_id=a_id)
        await wait_state(bus, b_id, JobState.COMPLETE)
    assert ran.read_text().splitlines() == [str(bus.config.home)]
    bundle = tmp_path / "home1.bundle"
    count = await bus.export_bundle(bundle)

    # Home 2: import; then its own trigger C after A (A is COMPLETE there, by import).
    # One event judged at a time: when C's registration has been judged, every imported
    # event before it has been too.
    async with lb.serve_engine(far, lb.EngineConfig(ack_wait_s=2, max_inflight=1)) as engine:
        report = await far.import_bundle(bundle)
        assert (report.events, report.published) == (count, count)
        await wait_state(far, a_id, JobState.COMPLETE)  # there already, by import
        c = await far.set_job_trigger(lb.JobDefn.of(["true"], name="c"), a_id, job_id=c_id)
        assert (await _fired(far, c.trigger_id)).downstream_job_id == c_id
        await wait_state(far, c_id, JobState.COMPLETE)

        assert await _submitted(far) == {c_id}, "home 2 was asked to run a job of the origin"
        assert await _own_firings(far) == [c.trigger_id], "home 2 fired a trigger it did not register"
        assert b.trigger_id not in engine.index

        again = await far.import_bundle(bundle)
        assert (again.published, again.already) == (0, count)
    assert ran.read_text().splitlines() == [str(bus.config.home)]  # B ran once, at home 1


class _Judged:
    """Subjects of the work messages an engine has finished judging (its ``observe`` hook)."""

    def __init__(self, engine: lb.Engine) -> None:
        self._done: set[str] = set()
        self._changed = asyncio.Event()
        engine.observe(self._seen)

    def _seen(self, subject: str, done: bool) -> None:
        if done:
            self._done.add(subject)
            self._changed.set()

    async def wait(self, *suffixes: str, timeout: float = 30) -> None:
        async def until() -> None:
            while not all(any(s.endswith(suffix) for s in self._done) for suffix in suffixes):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)


def _as_older_bundle(bundle: Path) -> None:
    """Rewrite the header as a bundle written before buses had an identity (the digest covers only the events)."""
    lines = bundle.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    del header["source_bus"]
    bundle.write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))


@pytest.mark.parametrize("written", ["now", "before-identities"])
async def test_an_imported_registration_never_fires_not_later_not_after_a_restart(
    bus: lb.Bus, far: lb.Bus, tmp_path: Path, written: str
) -> None:
    ran = tmp_path / "ran.txt"
    x_id, e_job, f_job = lb.new_id(), lb.new_id(), lb.new_id()
    # Home 1 registers two triggers that never fire there: after a job X it never runs, and on data it never sees.
    d = await bus.set_job_trigger(_appender(ran, "d"), x_id)
    m = await bus.set_data_trigger(_appender(ran, "m"), {"kind": "mesh"})
    bundle = tmp_path / "home1.bundle"
    await bus.export_bundle(bundle)
    if written == "before-identities":
        _as_older_bundle(bundle)
    report = await far.import_bundle(bundle)
    home1 = await bus_identity(bus)
    assert report.origin == (home1 if written == "now" else "unknown")
    registrations = await _stored(far, "lwfm.*.trigger.*.*.registered")
    assert {str(e["id"]) for e, _ in registrations} == {f"registered:{d.trigger_id}", f"registered:{m.trigger_id}"}
    assert all(h.get(ORIGIN) == report.origin for _, h in registrations)

    # Home 2's engine starts after the import: its index is rebuilt from a stream that holds them.
    async with lb.serve_engine(far, lb.EngineConfig(ack_wait_s=2, max_inflight=1)) as engine:
        judged = _Judged(engine)
        assert d.trigger_id not in engine.index and m.trigger_id not in engine.index
        e = await far.set_job_trigger(lb.JobDefn.of(["true"], name="e"), x_id, job_id=e_job)
        f = await far.set_data_trigger(lb.JobDefn.of(["true"], name="f"), {"kind": "mesh"}, job_id=f_job)
        # Now both conditions come to hold at home 2: X runs there, mesh data arrives there.
        await far.submit(lb.JobDefn.of(["true"], name="x"), job_id=x_id)
        await far.notate("/meshes/1", {"kind": "mesh"})
        # One event judged at a time: once the announcements of E and F are judged, so is what fired them.
        await judged.wait(f".{e.trigger_id}.fired", f".{f.trigger_id}.fired")
        await wait_state(far, e_job, JobState.COMPLETE)
        await wait_state(far, f_job, JobState.COMPLETE)

        assert sorted(await _own_firings(far)) == sorted([e.trigger_id, f.trigger_id])
        assert await _submitted(far) == {x_id, e_job, f_job}
        assert d.trigger_id not in engine.index and m.trigger_id not in engine.index

    # Read back by sequence, an imported registration is not a trigger of this bus either.
    raw = await far.jetstream.get_msg("LWFM", subject=f"lwfm.*.trigger.*.{d.trigger_id}.registered")
    feed = TriggerFeed(far, "lwfm.*.trigger.>", 8, lb.EngineStats())
    with pytest.raises(RuntimeError, match="imported from bus"):
        await feed.definition(d.trigger_id, int(raw.seq or 0))
    assert not ran.exists()  # neither D nor M ran, anywhere


async def test_two_local_homes_have_two_identities_each_kept_by_its_bus(
    bus: lb.Bus, far: lb.Bus, tmp_path: Path
) -> None:
    assert bus.config.site == far.config.site == "local"
    here, there = await bus_identity(bus), await bus_identity(far)
    assert here != there
    assert await bus_identity(bus) == here  # created once
    bundle = tmp_path / "here.bundle"
    await bus.export_bundle(bundle)
    header = json.loads(bundle.read_bytes().split(b"\n")[0])
    assert (header["source_site"], header["source_bus"]) == ("local", here)

    # Kept with the bus's stream: another home on the same server reads the same id, and
    # it survives the server's restart.
    root = tmp_path / "kept"
    async with start_test_server(root) as server:
        async with hold_connection(bus_config_for(server, tmp_path / "one", agents=())) as first:
            kept = await bus_identity(first)
    async with start_test_server(root) as server:
        async with hold_connection(bus_config_for(server, tmp_path / "other", agents=())) as again:
            assert await bus_identity(again) == kept
    assert kept not in (here, there)
