"""The engine's trigger index, alone: pure unit tests, no server.

The index must find exactly the triggers an event concerns, by lookup, never by
scanning every trigger (the matching cost must not grow with their number).
"""

from __future__ import annotations

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._engine._matcher import TriggerIndex, satisfies, state_mask

_DOWN = lb.Downstream(job=lb.JobDefn.of(["true"]))


def _job(up: str, *states: JobState, match: lb.Match = lb.Match.EXACT) -> lb.JobTrigger:
    return lb.JobTrigger(
        upstream=lb.Upstream(job_id=up, states=states or (JobState.COMPLETE,), match=match), downstream=_DOWN
    )


def _data(signature: dict[str, object], **fields: object) -> lb.DataTrigger:
    return lb.DataTrigger.model_validate({"signature": signature, "downstream": _DOWN, **fields})


def _ids(found: list[lb.DataTrigger] | list[object]) -> set[str]:
    return {f.trigger_id for f in found}


def test_a_job_event_finds_only_the_triggers_waiting_on_that_job() -> None:
    index = TriggerIndex()
    a, b = _job("up-a"), _job("up-b", JobState.FAILED)
    index.add(a, 1)
    index.add(b, 2)
    [(watch, mask)] = index.by_job("up-a")
    assert (watch.trigger_id, watch.reg_seq, watch.multi) == (a.trigger_id, 1, False)
    assert satisfies(mask, JobState.COMPLETE) and not satisfies(mask, JobState.FAILED)
    [(_, mask_b)] = index.by_job("up-b")
    assert satisfies(mask_b, JobState.FAILED) and not satisfies(mask_b, JobState.COMPLETE)
    assert index.by_job("nobody") == []


def test_terminal_match_is_satisfied_by_every_terminal_state_only() -> None:
    index = TriggerIndex()
    index.add(_job("up", match=lb.Match.TERMINAL), 1)
    [(_, mask)] = index.by_job("up")
    assert {s for s in JobState if satisfies(mask, s)} == {s for s in JobState if s.is_terminal}


def test_a_join_is_one_watch_under_each_upstream() -> None:
    index = TriggerIndex()
    join = lb.JoinTrigger(upstreams=tuple(lb.Upstream(job_id=f"u{i}") for i in range(3)), downstream=_DOWN)
    index.add(join, 7)
    watches = [index.by_job(f"u{i}")[0][0] for i in range(3)]
    assert all(w is watches[0] for w in watches)
    assert (watches[0].required, watches[0].total, watches[0].multi) == (3, 3, True)
    assert index.job_watch(join.trigger_id) is watches[0]


def test_adding_twice_is_harmless_and_removing_forgets_every_entry() -> None:
    index = TriggerIndex()
    t = _job("up")
    index.add(t, 1)
    index.add(t, 5)  # a replayed registration
    assert len(index) == 1 and index.reg_seq(t.trigger_id) == 1 and len(index.by_job("up")) == 1
    index.remove(t.trigger_id)
    assert t.trigger_id not in index and index.by_job("up") == [] and index.reg_seq(t.trigger_id) is None
    index.remove(t.trigger_id)  # removing again is harmless too
    assert len(index) == 0


def test_data_signature_matches_on_every_predicate() -> None:
    index = TriggerIndex()
    t = _data({"kind": {"op": "eq", "value": "mesh"}, "step": {"op": "range", "ge": 10, "lt": 20}})
    index.add(t, 1)
    assert _ids(index.by_data({"kind": "mesh", "step": 10}, "local", None)) == {t.trigger_id}
    assert index.by_data({"kind": "mesh", "step": 20}, "local", None) == []
    assert index.by_data({"kind": "grid", "step": 15}, "local", None) == []
    assert index.by_data({"step": 15}, "local", None) == []  # a missing key never matches


def test_booleans_and_numbers_stay_apart_but_one_equals_one_point_zero() -> None:
    index = TriggerIndex()
    one = _data({"x": {"op": "eq", "value": 1}})
    true = _data({"x": {"op": "eq", "value": True}})
    index.add(one, 1)
    index.add(true, 2)
    assert _ids(index.by_data({"x": 1.0}, "local", None)) == {one.trigger_id}
    assert _ids(index.by_data({"x": True}, "local", None)) == {true.trigger_id}


def test_glob_range_presence_and_empty_signatures() -> None:
    index = TriggerIndex()
    glob = _data({"name": {"op": "glob", "pattern": "out-*.h5"}})
    literal = _data({"name": {"op": "glob", "pattern": "exact.h5"}})  # no wildcard: indexed by value
    present = _data({"name": {"op": "present"}})
    anything = _data({})
    for i, t in enumerate((glob, literal, present, anything), 1):
        index.add(t, i)
    assert _ids(index.by_data({"name": "out-3.h5"}, "local", None)) == {
        glob.trigger_id, present.trigger_id, anything.trigger_id,
    }  # fmt: skip
    assert _ids(index.by_data({"name": "exact.h5"}, "local", None)) == {
        literal.trigger_id, present.trigger_id, anything.trigger_id,
    }  # fmt: skip
    assert _ids(index.by_data({"other": 1}, "local", None)) == {anything.trigger_id}


def test_list_values_match_by_element() -> None:
    index = TriggerIndex()
    t = _data({"tags": {"op": "eq", "value": "gold"}})
    index.add(t, 1)
    assert _ids(index.by_data({"tags": ["raw", "gold"]}, "local", None)) == {t.trigger_id}
    assert index.by_data({"tags": ["raw"]}, "local", None) == []


def test_source_site_and_workflow_narrow_a_signature() -> None:
    index = TriggerIndex()
    t = _data({"kind": {"op": "eq", "value": "mesh"}}, source_site="hpc", source_workflow="wf1")
    index.add(t, 1)
    assert _ids(index.by_data({"kind": "mesh"}, "hpc", "wf1")) == {t.trigger_id}
    assert index.by_data({"kind": "mesh"}, "local", "wf1") == []
    assert index.by_data({"kind": "mesh"}, "hpc", "wf2") == []


def test_removing_a_data_trigger_empties_its_buckets() -> None:
    index = TriggerIndex()
    t = _data({"kind": {"op": "eq", "value": "mesh"}, "step": {"op": "present"}}, fire="each")
    index.add(t, 1)
    assert index.is_per_arrival(t.trigger_id)
    index.remove(t.trigger_id)
    assert index.by_data({"kind": "mesh", "step": 1}, "local", None) == []
    assert len(index) == 0 and not index.is_per_arrival(t.trigger_id)


def test_candidates_do_not_grow_with_unrelated_triggers() -> None:
    """10 000 triggers on other jobs and other values: one event still meets only its own."""
    index = TriggerIndex()
    mine_job, mine_data = _job("mine"), _data({"kind": {"op": "eq", "value": "mine"}})
    index.add(mine_job, 1)
    index.add(mine_data, 2)
    for i in range(10_000):
        index.add(_job(f"other-{i}"), 10 + i)
        index.add(_data({"kind": {"op": "eq", "value": f"other-{i}"}}), 20_000 + i)
    assert [w.trigger_id for w, _ in index.by_job("mine")] == [mine_job.trigger_id]
    assert _ids(index.by_data({"kind": "mine"}, "local", None)) == {mine_data.trigger_id}
    assert len(index) == 20_002


def test_state_mask_is_exactly_the_states_given() -> None:
    mask = state_mask([JobState.COMPLETE, JobState.CANCELLED])
    assert {s for s in JobState if satisfies(mask, s)} == {JobState.COMPLETE, JobState.CANCELLED}
    assert state_mask([]) == 0
