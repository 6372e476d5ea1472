"""Triggers end to end: an in-process engine, a real nats-server, real local jobs.

Upstream states are either produced by real jobs or published as job events by the
test, which makes skipped and out-of-order states exact.  Nothing here sleeps: every
wait is on an event (a trigger outcome, a job's terminal state) with a timeout.

"Did not fire" is proven by stream order, never by waiting for time to pass: tests
that need it run the engine with ``max_inflight=1`` (events are then judged one after
another in stream order), and make something that must come later fire -- once it has,
every earlier event has been judged.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

import pytest
from nats.aio.msg import Msg
from pydantic import ValidationError

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._engine._consumer import own_delivery
from tests._helpers import engine_idle

_ENGINE = lb.EngineConfig(ack_wait_s=2, dispatch_backoff_s=0.05)
# One event judged at a time, in stream order: what "X did not fire before Y" relies on.
_SERIAL = lb.EngineConfig(ack_wait_s=2, dispatch_backoff_s=0.05, max_inflight=1)

_Outcome = lb.TriggerFiredEvent | lb.TriggerExpiredEvent | lb.TriggerFailedEvent
_OUTCOMES = (lb.TriggerFiredEvent, lb.TriggerExpiredEvent, lb.TriggerFailedEvent)


def _true() -> lb.JobDefn:
    return lb.JobDefn.of(["true"])


def _python(code: str) -> lb.JobDefn:
    return lb.JobDefn.of([sys.executable, "-c", code])


def _trigger_filter(trigger_id: str) -> str:
    return f"lwfm.*.trigger.*.{lb.check_token(trigger_id)}.*"


async def _outcome(bus: lb.Bus, trigger_id: str, timeout: float = 30) -> _Outcome:
    """The trigger's first fired / expired / failed event (it may be in the stream already)."""

    async def scan() -> _Outcome:
        async with bus.subscribe(_trigger_filter(trigger_id), from_start=True) as events:
            async for event in events:
                if isinstance(event, _OUTCOMES):
                    return event
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def _fired(bus: lb.Bus, trigger_id: str, timeout: float = 30) -> lb.TriggerFired:
    event = await _outcome(bus, trigger_id, timeout)
    assert isinstance(event, lb.TriggerFiredEvent), event
    return event.data


async def _expired(bus: lb.Bus, trigger_id: str, timeout: float = 30) -> lb.TriggerExpired:
    event = await _outcome(bus, trigger_id, timeout)
    assert isinstance(event, lb.TriggerExpiredEvent), event
    return event.data


async def _fired_n(bus: lb.Bus, trigger_id: str, n: int, timeout: float = 30) -> list[lb.TriggerFired]:
    """The first ``n`` fired events of a per-arrival trigger."""

    async def scan() -> list[lb.TriggerFired]:
        out: list[lb.TriggerFired] = []
        async with bus.subscribe(_trigger_filter(trigger_id), from_start=True) as events:
            async for event in events:
                if isinstance(event, lb.TriggerFiredEvent):
                    out.append(event.data)
                    if len(out) == n:
                        return out
        raise AssertionError("a followed subscription ended")  # pragma: no cover

    return await asyncio.wait_for(scan(), timeout)


async def _outcomes(bus: lb.Bus, trigger_id: str) -> list[_Outcome]:
    """Every outcome event of the trigger stored so far."""
    async with bus.replay(_trigger_filter(trigger_id)) as history:
        return [e async for e in history if isinstance(e, _OUTCOMES)]


async def _publish_state(bus: lb.Bus, job_id: str, state: JobState, workflow_id: str | None = None) -> str:
    """Publish a job event as a site would (deterministic id); returns the event id."""
    event_id = f"{job_id}:{state.value}"
    status = lb.JobStatus(job_id=job_id, site="local", state=state, workflow_id=workflow_id)
    await bus.publish(lb.make_event(status, source="/test", id=event_id))
    return event_id


async def _arrive(bus: lb.Bus, metadata: dict[str, object], *, site: str = "local") -> lb.DataEvent:
    """Publish a data arrival; returns the event (its data id is also its producer's job id)."""
    data_id = lb.new_id()
    arrival = lb.DataArrival.model_validate(
        {"data_id": data_id, "site": site, "location": f"/x/{data_id}", "metadata": metadata, "job_id": data_id}
    )
    event = lb.make_event(arrival, source="/test")
    assert isinstance(event, lb.DataEvent)
    await bus.publish(event)
    return event


async def _never_ran(bus: lb.Bus, job_id: str) -> None:
    with pytest.raises(lb.UnknownJobError):
        await bus.status(job_id)


# --------------------------------------------------------------------- 3b: one upstream


async def test_3b_b_after_a_registered_before_a_is_submitted(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        wf = await bus.define_workflow("3b")
        a_id, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_python("print('B')"), a_id, job_id=b_id)
        a = await bus.submit(_python("print('A')"), workflow=wf, job_id=a_id)
        assert (await a.wait(timeout=30)).state is JobState.COMPLETE

        b = await bus.wait(b_id, timeout=30)
        assert b.state is JobState.COMPLETE
        assert b.parent_ids == (a_id,)
        assert b.workflow_id == wf.workflow_id
        assert await bus.logs(b_id) == b"B\n"

        fired = await _fired(bus, trig.trigger_id)
        assert fired.downstream_job_id == b_id
        assert fired.parent_job_ids == (a_id,)
        assert fired.cause_event_ids == (f"{a_id}:COMPLETE",)
        record = await bus.trigger(trig.trigger_id)
        assert record is not None
        assert (record.state, record.fired, record.last_job_id, record.kind) == ("fired", 1, b_id, "job-status")
        await engine_idle(bus)
        assert engine.stats.fired == 1
        # B was started only after A completed.
        history = await (await bus.index()).history(a_id)
        assert history[-1][0] is JobState.COMPLETE
        assert (await bus.status(b_id)).created_at >= history[-1][1]


async def test_registered_after_the_condition_holds_still_fires(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        a = await bus.submit(_true())
        j1 = await bus.submit(_true())
        j2 = await bus.submit(_true())
        for job in (a, j1, j2):
            assert (await job.wait(timeout=30)).state is JobState.COMPLETE

        b_id, c_id = lb.new_id(), lb.new_id()
        single = await bus.set_job_trigger(_true(), a, job_id=b_id)
        join = await bus.set_job_trigger(_true(), [j1, j2], job_id=c_id)
        assert isinstance(single, lb.JobTrigger)
        assert isinstance(join, lb.JoinTrigger)

        b = await bus.wait(b_id, timeout=30)
        c = await bus.wait(c_id, timeout=30)
        assert (b.state, b.parent_ids) == (JobState.COMPLETE, (a.job_id,))
        assert c.state is JobState.COMPLETE
        assert sorted(c.parent_ids) == sorted([j1.job_id, j2.job_id])
        assert (await _fired(bus, single.trigger_id)).downstream_job_id == b_id
        assert (await _fired(bus, join.trigger_id)).downstream_job_id == c_id
        await engine_idle(bus)
        assert engine.stats.fired == 2


# --------------------------------------------------------------------- 3c: joins


async def test_3c_join_all_of_three_real_jobs_fires_once_with_all_parents(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        ups = [lb.new_id() for _ in range(3)]
        b_id = lb.new_id()
        trig = await bus.set_job_trigger(_true(), ups, job_id=b_id)
        for i, up in enumerate(ups):
            await bus.submit(_python(f"print({i})"), job_id=up)

        b = await bus.wait(b_id, timeout=30)
        assert b.state is JobState.COMPLETE
        assert sorted(b.parent_ids) == sorted(ups)
        for up in ups:
            assert (await bus.status(up)).state is JobState.COMPLETE
        fired = await _fired(bus, trig.trigger_id)
        assert sorted(fired.parent_job_ids) == sorted(ups)
        assert len(await _outcomes(bus, trig.trigger_id)) == 1
        record = await bus.trigger(trig.trigger_id)
        assert record is not None and (record.state, record.fired) == ("fired", 1)
        await engine_idle(bus)
        assert engine.stats.fired == 1


async def test_3c_join_any_fires_on_the_first_upstream(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        real = lb.new_id()
        never = [lb.new_id(), lb.new_id()]  # jobs that never exist
        b_id = lb.new_id()
        trig = await bus.set_job_trigger(_true(), [never[0], real, never[1]], mode="any", job_id=b_id)
        await bus.submit(_true(), job_id=real)

        b = await bus.wait(b_id, timeout=30)
        assert (b.state, b.parent_ids) == (JobState.COMPLETE, (real,))
        assert (await _fired(bus, trig.trigger_id)).parent_job_ids == (real,)


async def test_3c_join_at_least_two_of_three_with_one_failing(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        ok1, ok2, bad = lb.new_id(), lb.new_id(), lb.new_id()
        b_id = lb.new_id()
        trig = await bus.set_job_trigger(_true(), [ok1, bad, ok2], mode="at-least", at_least=2, job_id=b_id)
        assert isinstance(trig, lb.JoinTrigger) and trig.required() == 2
        await bus.submit(lb.JobDefn.of(["false"]), job_id=bad)
        await bus.submit(_true(), job_id=ok1)
        await bus.submit(_true(), job_id=ok2)

        b = await bus.wait(b_id, timeout=30)
        assert b.state is JobState.COMPLETE
        assert sorted(b.parent_ids) == sorted([ok1, ok2])
        assert (await bus.wait(bad, timeout=30)).state is JobState.FAILED
        fired = await _fired(bus, trig.trigger_id)
        assert sorted(fired.parent_job_ids) == sorted([ok1, ok2])


# --------------------------------------------------------------------- joins that can no longer fire


async def test_join_all_with_a_failed_upstream_expires_and_never_runs(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        ok, bad, b_id = lb.new_id(), lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), [ok, bad], job_id=b_id)
        await bus.submit(_true(), job_id=ok)
        await bus.submit(lb.JobDefn.of(["false"]), job_id=bad)

        expired = await _expired(bus, trig.trigger_id)
        assert bad in expired.reason and "FAILED" in expired.reason
        assert expired.fallback_job_id is None
        record = await bus.trigger(trig.trigger_id)
        assert record is not None
        assert (record.state, record.fired, record.last_job_id) == ("expired", 0, None)
        assert record.reason == expired.reason
        await engine_idle(bus)
        assert engine.stats.expired == 1
        # The firing key is settled as an expiry: the downstream can never be dispatched now.
        assert (await bus.wait(ok, timeout=30)).state is JobState.COMPLETE
        await _never_ran(bus, b_id)
        assert [type(e) for e in await _outcomes(bus, trig.trigger_id)] == [lb.TriggerExpiredEvent]


async def test_join_that_can_no_longer_fire_starts_its_fallback(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        ok, bad, b_id = lb.new_id(), lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), [ok, bad], job_id=b_id, fallback=_python("print('plan B')"))
        await bus.submit(lb.JobDefn.of(["false"]), job_id=bad)

        expired = await _expired(bus, trig.trigger_id)
        assert expired.fallback_job_id is not None and expired.fallback_job_id != b_id
        fallback = await bus.wait(expired.fallback_job_id, timeout=30)
        assert fallback.state is JobState.COMPLETE
        assert await bus.logs(expired.fallback_job_id) == b"plan B\n"
        record = await bus.trigger(trig.trigger_id)
        assert record is not None
        assert (record.state, record.last_job_id) == ("expired", expired.fallback_job_id)
        await _never_ran(bus, b_id)


# --------------------------------------------------------------------- within windows


async def test_within_window_closes_expired_and_late_upstream_does_not_fire(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _SERIAL) as engine:
        a1, a2, b_id = lb.new_id(), lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), [a1, a2], within_s=1, job_id=b_id)
        await _publish_state(bus, a1, JobState.COMPLETE)

        expired = await _expired(bus, trig.trigger_id, timeout=30)  # the engine's timer closes the window
        assert "window" in expired.reason
        assert "1 of 2" in expired.reason
        assert expired.fallback_job_id is None

        # a2 completing now is too late: a trigger registered after the expiry on a2 fires,
        # and the expired join (judged first, in the same event) does not.
        sentinel = await bus.set_job_trigger(_true(), a2)
        await _publish_state(bus, a2, JobState.COMPLETE)
        await _fired(bus, sentinel.trigger_id)
        record = await bus.trigger(trig.trigger_id)
        assert record is not None and (record.state, record.fired) == ("expired", 0)
        assert len(await _outcomes(bus, trig.trigger_id)) == 1
        await _never_ran(bus, b_id)
        await engine_idle(bus)
        assert (engine.stats.expired, engine.stats.fired) == (1, 1)


async def test_within_window_closes_and_the_fallback_runs(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        a1, a2, b_id = lb.new_id(), lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), [a1, a2], within_s=1, job_id=b_id, fallback=_true())
        await _publish_state(bus, a1, JobState.COMPLETE)

        expired = await _expired(bus, trig.trigger_id, timeout=30)
        assert "window" in expired.reason
        assert expired.fallback_job_id is not None
        fallback = await bus.wait(expired.fallback_job_id, timeout=30)
        assert fallback.state is JobState.COMPLETE
        assert fallback.parent_ids == (a1,)
        await _never_ran(bus, b_id)


# --------------------------------------------------------------------- skipped and out-of-order states


async def test_at_or_after_running_fires_on_complete_that_arrives_before_running(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        up, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), up, states=JobState.RUNNING, match="at-or-after", job_id=b_id)
        complete = await _publish_state(bus, up, JobState.COMPLETE)
        await _publish_state(bus, up, JobState.RUNNING)  # late and out of order

        fired = await _fired(bus, trig.trigger_id)
        assert fired.cause_event_ids == (complete,)
        assert (await bus.wait(b_id, timeout=30)).state is JobState.COMPLETE
        assert len(await _outcomes(bus, trig.trigger_id)) == 1


async def test_complete_seen_first_satisfies_a_trigger_wanting_complete(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE):
        up, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), up, job_id=b_id)
        complete = await _publish_state(bus, up, JobState.COMPLETE)  # no READY, no RUNNING

        fired = await _fired(bus, trig.trigger_id)
        assert (fired.cause_event_ids, fired.parent_job_ids) == ((complete,), (up,))
        assert (await bus.wait(b_id, timeout=30)).state is JobState.COMPLETE


async def test_job_trigger_wanting_complete_expires_when_the_upstream_fails(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        up, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), up, job_id=b_id)
        await _publish_state(bus, up, JobState.RUNNING)
        await _publish_state(bus, up, JobState.FAILED)

        expired = await _expired(bus, trig.trigger_id)
        assert up in expired.reason and "FAILED" in expired.reason
        assert expired.fallback_job_id is None
        record = await bus.trigger(trig.trigger_id)
        assert record is not None and record.state == "expired"
        await _never_ran(bus, b_id)
        await engine_idle(bus)
        assert (engine.stats.fired, engine.stats.expired) == (0, 1)


# --------------------------------------------------------------------- 3d: data flow

_SIGNATURE: dict[str, object] = {
    "kind": "mesh",
    "resolution": {"op": "range", "ge": 0.5, "lt": 2},
    "name": {"op": "glob", "pattern": "run-*.h5"},
    "validated": {"op": "present"},
}
_MATCHING: dict[str, object] = {"kind": "mesh", "resolution": 1.0, "name": "run-7.h5", "validated": False}


async def test_3d_data_signature_fires_once_on_the_matching_arrival_only(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _SERIAL) as engine:
        b_id = lb.new_id()
        trig = await bus.set_data_trigger(_true(), _SIGNATURE, job_id=b_id)
        assert isinstance(trig, lb.DataTrigger)
        assert {k: type(p) for k, p in trig.signature.items()} == {
            "kind": lb.Eq,
            "resolution": lb.Range,
            "name": lb.Glob,
            "validated": lb.Present,
        }
        sentinel = await bus.set_data_trigger(_true(), {"sentinel": True})
        misses = [
            {**_MATCHING, "kind": "image"},  # eq
            {**_MATCHING, "resolution": 2},  # range: lt is exclusive
            {**_MATCHING, "resolution": "1.0"},  # range: not a number
            {**_MATCHING, "name": "run-7.h6"},  # glob
            {k: v for k, v in _MATCHING.items() if k != "validated"},  # present
        ]
        for metadata in misses:
            await _arrive(bus, metadata)
        match = await _arrive(bus, _MATCHING)
        again = await _arrive(bus, {**_MATCHING, "name": "run-8.h5"})  # matches, but the trigger fires once
        await _arrive(bus, {"sentinel": True})

        await _fired(bus, sentinel.trigger_id)  # every arrival before it has been judged
        fired = await _fired(bus, trig.trigger_id)
        assert fired.cause_event_ids == (match.id,)
        assert again.id not in fired.cause_event_ids
        assert fired.downstream_job_id == b_id
        assert (await bus.wait(b_id, timeout=30)).state is JobState.COMPLETE
        assert len(await _outcomes(bus, trig.trigger_id)) == 1
        record = await bus.trigger(trig.trigger_id)
        assert record is not None and (record.state, record.fired, record.last_job_id) == ("fired", 1, b_id)
        await engine_idle(bus)
        assert engine.stats.fired == 2  # the trigger and the sentinel


async def test_3d_fire_each_starts_one_job_per_arrival_and_filters_by_site(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _SERIAL):
        trig = await bus.set_data_trigger(_true(), {"kind": "frame"}, fire="each", source_site="local")
        sentinel = await bus.set_data_trigger(_true(), {"sentinel": True})
        first = await _arrive(bus, {"kind": "frame", "n": 1})
        elsewhere = await _arrive(bus, {"kind": "frame", "n": 2}, site="remote")
        await _arrive(bus, {"kind": "image"})
        second = await _arrive(bus, {"kind": ["frame", "raw"], "n": 3})  # a list value contains it
        await _arrive(bus, {"sentinel": True})

        await _fired(bus, sentinel.trigger_id)
        fired = await _fired_n(bus, trig.trigger_id, 2)
        assert [f.cause_event_ids for f in fired] == [(first.id,), (second.id,)]
        assert elsewhere.id not in {c for f in fired for c in f.cause_event_ids}
        assert all(isinstance(e, lb.TriggerFiredEvent) for e in await _outcomes(bus, trig.trigger_id))
        assert len(await _outcomes(bus, trig.trigger_id)) == 2
        jobs = [f.downstream_job_id for f in fired]
        assert jobs[0] is not None and jobs[1] is not None and jobs[0] != jobs[1]
        assert {f.firing_key for f in fired} == {
            lb.firing_key(trig, first.data.data_id),
            lb.firing_key(trig, second.data.data_id),
        }
        for job_id in jobs:
            assert job_id is not None
            assert (await bus.wait(job_id, timeout=30)).state is JobState.COMPLETE
        record = await bus.trigger(trig.trigger_id)
        assert record is not None and (record.state, record.fired) == ("active", 2)


def test_predicate_instances_are_accepted_in_a_signature() -> None:
    trig = lb.DataTrigger(
        signature={"resolution": lb.Range(ge=1), "name": lb.Glob(pattern="*.h5"), "ok": lb.Present()},
        downstream=lb.Downstream(job=_true()),
    )
    assert trig.matches({"resolution": 3, "name": "a.h5", "ok": True}, "local", None)


# --------------------------------------------------------------------- exactly once under load


async def test_200_simultaneous_completions_fire_a_join_once(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        ups = [f"up{i:03d}-{lb.new_id()}" for i in range(200)]
        b_id = lb.new_id()
        trig = await bus.set_job_trigger(_true(), ups, job_id=b_id)
        await asyncio.gather(*(_publish_state(bus, up, JobState.COMPLETE) for up in ups))

        fired = await _fired(bus, trig.trigger_id, timeout=60)
        assert len(fired.parent_job_ids) == 200
        assert set(fired.parent_job_ids) == set(ups)
        b = await bus.wait(b_id, timeout=30)
        assert b.state is JobState.COMPLETE
        assert len(b.parent_ids) == 200
        await engine_idle(bus)
        assert engine.stats.fired == 1
        assert len(await _outcomes(bus, trig.trigger_id)) == 1
        history = await (await bus.index()).history(b_id)
        assert [s for s, _ in history].count(JobState.READY) == 1


async def test_two_engines_fire_each_of_50_triggers_exactly_once(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    async with (
        lb.connect(bus_config, name="engine-1") as bus1,
        lb.connect(bus_config, name="engine-2") as bus2,
        lb.serve_engine(bus1, _ENGINE.model_copy(update={"name": "e1"})) as e1,
        lb.serve_engine(bus2, _ENGINE.model_copy(update={"name": "e2"})) as e2,
    ):
        ups = [lb.new_id() for _ in range(50)]
        downs = [lb.new_id() for _ in range(50)]
        triggers = [await bus.set_job_trigger(_true(), up, job_id=down) for up, down in zip(ups, downs, strict=True)]
        await asyncio.gather(*(_publish_state(bus, up, JobState.COMPLETE) for up in ups))

        finals = await asyncio.gather(*(bus.wait(down, timeout=60) for down in downs))
        assert [f.state for f in finals] == [JobState.COMPLETE] * 50
        assert [f.parent_ids for f in finals] == [(up,) for up in ups]
        fired = await asyncio.gather(*(_fired(bus, t.trigger_id, timeout=60) for t in triggers))
        assert [f.downstream_job_id for f in fired] == downs

        async with bus.replay("lwfm.*.trigger.*.*.fired") as history:
            counts = Counter([e.data.trigger_id async for e in history if isinstance(e, lb.TriggerFiredEvent)])
        assert counts == Counter({t.trigger_id: 1 for t in triggers})
        await engine_idle(bus)
        assert e1.stats.fired + e2.stats.fired == 50


# --------------------------------------------------------------------- dispatch failure


async def test_dispatch_to_an_unknown_site_fails_after_bounded_retries(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        up, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), up, site="nosuchsite", job_id=b_id)
        await _publish_state(bus, up, JobState.COMPLETE)

        event = await _outcome(bus, trig.trigger_id)
        assert isinstance(event, lb.TriggerFailedEvent), event
        assert "nosuchsite" in event.data.reason
        assert event.data.reason.startswith("unknown site 'nosuchsite'"), event.data.reason  # no class name first
        assert event.data.attempts == engine.config.dispatch_attempts
        await engine_idle(bus)
        assert engine.stats.dispatch_calls == engine.config.dispatch_attempts
        assert (engine.stats.failed, engine.stats.fired) == (1, 0)
        record = await bus.trigger(trig.trigger_id)
        assert record is not None
        assert (record.state, record.fired) == ("failed", 0)
        assert record.reason is not None and "nosuchsite" in record.reason

        b = await bus.wait(b_id, timeout=30)
        assert b.state is JobState.FAILED
        assert b.native_info is not None and "dispatch" in b.native_info
        assert "Error" not in b.native_info, b.native_info  # words, not ConfigError (issue 22, item 6)
        assert b.parent_ids == (up,)


async def test_dispatch_failure_with_a_long_error_is_still_reported(bus: lb.Bus) -> None:
    site = "s" * 128  # a valid token; the unknown-site error quoting it is long
    async with lb.serve_engine(bus, _ENGINE):
        up, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), up, site=site, job_id=b_id)
        await _publish_state(bus, up, JobState.COMPLETE)
        event = await _outcome(bus, trig.trigger_id, timeout=30)
        assert isinstance(event, lb.TriggerFailedEvent), event
        assert len(event.data.reason) > 256 and site in event.data.reason
        b = await bus.wait(b_id, timeout=30)
        assert b.state is JobState.FAILED
        assert b.native_info is not None and site in b.native_info


# --------------------------------------------------------------------- malformed definitions


def _downstream() -> dict[str, object]:
    return {"job": {"argv": ["true"]}}


def test_malformed_definitions_are_refused_naming_the_field() -> None:
    ups = [{"job_id": "a"}, {"job_id": "b"}]
    with pytest.raises(ValidationError, match="at_least"):
        lb.JoinTrigger.model_validate({"upstreams": ups, "mode": "at-least", "downstream": _downstream()})
    with pytest.raises(ValidationError, match="at_least=3 exceeds"):
        lb.JoinTrigger.model_validate(
            {"upstreams": ups, "mode": "at-least", "at_least": 3, "downstream": _downstream()}
        )
    with pytest.raises(ValidationError, match="'a' is listed twice"):
        lb.JoinTrigger.model_validate({"upstreams": [*ups, {"job_id": "a"}], "downstream": _downstream()})
    with pytest.raises(ValidationError, match="ge, gt, le, lt"):
        lb.Range()
    with pytest.raises(ValidationError, match="ge, gt, le, lt") as range_err:
        lb.trigger_adapter().validate_python(
            {"kind": "data-flow", "signature": {"size": {"op": "range"}}, "downstream": _downstream()}
        )
    assert range_err.value.errors()[0]["loc"][:2] == ("data-flow", "signature")
    with pytest.raises(ValidationError, match="kind") as kind_err:
        lb.trigger_adapter().validate_python({"kind": "cron", "downstream": _downstream()})
    assert kind_err.value.errors()[0]["type"] == "union_tag_invalid"
    with pytest.raises(ValidationError, match="job_id"):
        lb.trigger_adapter().validate_python(
            {"kind": "job-status", "upstream": {"job_id": "a.b"}, "downstream": _downstream()}
        )


async def test_malformed_registrations_on_the_wire_are_dead_lettered_and_the_engine_goes_on(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _SERIAL) as engine:
        not_json = "lwfm.local.trigger._.t9.registered"
        await bus.jetstream.publish(not_json, b"{not json")

        # A well-formed envelope whose definition is not a valid trigger.
        good = lb.JoinTrigger.model_validate(
            {"trigger_id": "t10", "upstreams": [{"job_id": "a"}, {"job_id": "b"}], "downstream": _downstream()}
        )
        registered = lb.TriggerRegistered(trigger_id="t10", site="local", definition=good)
        raw = json.loads(lb.encode_event(lb.make_event(registered, source="/test")))
        raw["data"]["definition"]["mode"] = "at-least"  # and no at_least
        bad_definition = "lwfm.local.trigger._.t10.registered"
        await bus.jetstream.publish(bad_definition, json.dumps(raw).encode())

        up, b_id = lb.new_id(), lb.new_id()
        trig = await bus.set_job_trigger(_true(), up, job_id=b_id)
        await _publish_state(bus, up, JobState.COMPLETE)
        assert (await bus.wait(b_id, timeout=30)).state is JobState.COMPLETE
        await _fired(bus, trig.trigger_id)

        await engine_idle(bus)
        assert engine.stats.dead_lettered == 2
        assert "t10" not in engine.index and "t9" not in engine.index
        parked = {d.subject: d async for d in bus.dead_letters()}
        assert set(parked) == {not_json, bad_definition}
        assert parked[not_json].reason == "not-json"
        assert parked[not_json].data == b"{not json"
        assert parked[bad_definition].reason == "invalid"
        assert "at_least" in parked[bad_definition].error


# --------------------------------------------------------------------- cancel


async def test_cancelled_trigger_never_fires(bus: lb.Bus) -> None:
    async with lb.serve_engine(bus, _ENGINE) as engine:
        up, cancelled_job, live_job = lb.new_id(), lb.new_id(), lb.new_id()
        doomed = await bus.set_job_trigger(_true(), up, job_id=cancelled_job)
        await bus.cancel_trigger(doomed.trigger_id, reason="changed my mind")
        record = await bus.trigger(doomed.trigger_id)
        assert record is not None and (record.state, record.reason) == ("cancelled", "changed my mind")

        # Registered after the cancel, on the same upstream: the upstream's event meets both
        # (the cancelled one first), so once this one has fired the other had its chance.
        live = await bus.set_job_trigger(_true(), up, job_id=live_job)
        await _publish_state(bus, up, JobState.COMPLETE)
        assert (await _fired(bus, live.trigger_id)).downstream_job_id == live_job
        assert (await bus.wait(live_job, timeout=30)).state is JobState.COMPLETE

        assert await _outcomes(bus, doomed.trigger_id) == []
        record = await bus.trigger(doomed.trigger_id)
        assert record is not None and (record.state, record.fired) == ("cancelled", 0)
        await _never_ran(bus, cancelled_job)
        await engine_idle(bus)
        assert engine.stats.fired == 1
        with pytest.raises(lb.TriggerError):
            await bus.cancel_trigger("no-such-trigger")


@pytest.mark.parametrize(
    ("reply", "ours"),
    [
        ("$JS.ACK.LWFM.lwfm-engine.1.42.7.1700000000.0", True),
        ("$JS.ACK.LWFM_PUBLIC.rogue.1.42.7.1700000000.0", False),  # another site's consumer of our copy
        ("$JS.ACK.LWFM.lwfm-engine-x.1.42.7.1700000000.0", False),
        ("_INBOX.abc", False),
        (None, False),  # a plain publish onto the delivery subject
    ],
)
def test_only_what_the_engines_own_consumer_delivers_is_work(reply: str | None, ours: bool) -> None:
    """In a federation another site can point a consumer's deliveries at any subject of this server,
    the engine's delivery subject included (tests/federation/test_accounts.py does it for real)."""
    msg = Msg(_client=None, subject="lwfm.local.job._.a.COMPLETE", reply=reply or "", data=b"")  # type: ignore[arg-type]
    assert own_delivery(msg, "lwfm-engine") is ours
