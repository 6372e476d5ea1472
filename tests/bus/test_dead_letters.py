"""Bad input on the bus is parked with its reason; the consumer never stalls or crashes."""

from __future__ import annotations

import json

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from tests.samples import sample_events


def _valid(job: str) -> lb.Event:
    return lb.make_event(lb.JobStatus(job_id=job, site="s", state=JobState.COMPLETE), source="/t")


async def test_each_bad_input_class_is_dead_lettered_and_consumption_goes_on(bus_config: lb.BusConfig) -> None:
    cfg = bus_config.model_copy(update={"max_event_bytes": 2048})
    good = sample_events()[0]
    wrong_type = json.loads(lb.encode_event(good))
    wrong_type["type"] = "lwfm.no.such.type"
    invalid = json.loads(lb.encode_event(good))
    invalid["data"]["state"] = "EXPLODED"
    oversize = json.loads(lb.encode_event(good))
    oversize["data"]["info"] = "x" * 3000
    bad = {
        "not-json": b"\xff\xfe not json at all",
        "unknown-type": json.dumps(wrong_type).encode(),
        "invalid": json.dumps(invalid).encode(),
        "too-large": json.dumps(oversize).encode(),
    }
    async with lb.connect(cfg) as bus:
        async with bus.subscribe() as sub:
            await bus.publish(_valid("before"))
            for i, raw in enumerate(bad.values()):
                await bus.jetstream.publish(f"lwfm.s.job._.bad{i}.COMPLETE", raw)
            await bus.publish(_valid("after"))
            first = await sub.next(timeout=10)
            second = await sub.next(timeout=10)
        assert [first.subject, second.subject] == ["before", "after"]
        assert sub.dead_lettered == 4
        assert bus.stats.dead_letter_reasons == dict.fromkeys(bad, 1)

        parked = [d async for d in bus.dead_letters()]
        assert {d.reason: d.data for d in parked} == bad
        assert all(d.subject.startswith("lwfm.s.job._.bad") and d.error for d in parked)


async def test_two_subscribers_park_one_copy(bus: lb.Bus) -> None:
    async with bus.subscribe() as a, bus.subscribe() as b:
        await bus.jetstream.publish("lwfm.s.job._.x.COMPLETE", b"{}")
        await bus.publish(_valid("ok"))
        assert (await a.next(timeout=10)).subject == "ok"
        assert (await b.next(timeout=10)).subject == "ok"
    parked = [d async for d in bus.dead_letters()]
    assert len(parked) == 1 and parked[0].reason == "unknown-type"


async def test_publishing_an_oversize_event_is_refused_up_front(bus_config: lb.BusConfig) -> None:
    cfg = bus_config.model_copy(update={"max_event_bytes": 512})
    event = lb.make_event(lb.JobStatus(job_id="j", site="s", state=JobState.INFO, info="y" * 600), source="/t")
    async with lb.connect(cfg) as bus:
        with pytest.raises(lb.EventTooLargeError, match="512"):
            await bus.publish(event)
        info = await bus.jetstream.stream_info("LWFM")
        assert info.state.messages == 0
