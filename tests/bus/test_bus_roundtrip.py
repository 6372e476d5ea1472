"""Publish -> subscribe round trips against a real nats-server."""

from __future__ import annotations

import lwfm_bus as lb
from lwfm_bus import JobState
from tests.samples import sample_events


def test_every_event_class_is_sampled() -> None:
    from lwfm_bus._events import event_classes

    assert {type(e) for e in sample_events()} == set(event_classes())


async def test_round_trip_every_event_type(bus: lb.Bus) -> None:
    events = sample_events()
    async with bus.subscribe("lwfm.>") as sub:
        for event in events:
            ack = await bus.publish(event)
            assert ack.seq > 0 and not ack.duplicate
        received = [await sub.next(timeout=10) for _ in events]
    assert received == events
    assert [type(e) for e in received] == [type(e) for e in events]


async def test_republished_id_is_deduplicated(bus: lb.Bus) -> None:
    event = sample_events()[0]
    first = await bus.publish(event)
    second = await bus.publish(event)
    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq
    async with bus.replay() as history:
        stored = [e async for e in history]
    assert stored == [event]


async def test_replay_from_sequence(bus: lb.Bus) -> None:
    events = sample_events()
    seqs = [(await bus.publish(e)).seq for e in events]
    async with bus.replay(start_seq=seqs[3]) as history:
        replayed = [e async for e in history]
        assert history.last_seq == seqs[-1]
    assert replayed == events[3:]


async def test_replay_from_time(bus: lb.Bus) -> None:
    events = sample_events()
    for e in events[:3]:
        await bus.publish(e)
    # The server stamps messages with its own clock; take the cut from the stream itself.
    info = await bus.jetstream.stream_info("LWFM")
    cut_seq = info.state.last_seq + 1
    for e in events[3:]:
        await bus.publish(e)
    msg = await bus.jetstream.get_msg("LWFM", cut_seq)
    assert msg.seq == cut_seq
    async with bus.replay(start_time=_stored_time(msg)) as history:
        replayed = [e async for e in history]
    assert replayed[-len(events[3:]) :] == events[3:]
    assert events[0] not in replayed


def _stored_time(msg: object):  # type: ignore[no-untyped-def]
    from datetime import datetime

    raw = getattr(msg, "time", None)
    assert raw is not None
    return raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


async def test_empty_replay_ends(bus: lb.Bus) -> None:
    async with bus.replay() as history:
        assert [e async for e in history] == []


async def test_filters_select_by_wildcards(bus: lb.Bus) -> None:
    a = lb.make_event(lb.JobStatus(job_id="ja", site="s1", state=JobState.FAILED, workflow_id="w1"), source="/t")
    b = lb.make_event(lb.JobStatus(job_id="jb", site="s1", state=JobState.COMPLETE, workflow_id="w2"), source="/t")
    c = lb.make_event(lb.JobStatus(job_id="jc", site="s2", state=JobState.FAILED, workflow_id="w1"), source="/t")
    d = lb.make_event(lb.DataArrival(data_id="d", site="s1", location="/x", job_id="ja", workflow_id="w1"), source="/t")
    for e in (a, b, c, d):
        await bus.publish(e)

    async def select(flt: str) -> list[lb.Event]:
        async with bus.replay(flt) as history:
            return [e async for e in history]

    assert await select(lb.workflow_filter("w1")) == [a, c, d]
    assert await select(lb.job_filter("ja")) == [a, d]
    assert await select("lwfm.s1.job.*.*.FAILED") == [a]
    assert await select(lb.data_filter("s1")) == [d]
