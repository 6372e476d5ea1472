"""Event models, subject validation and the committed JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import lwfm_bus as lb
from lwfm_bus._schemas import generate_schemas, render
from tests.samples import sample_events

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    wanted = generate_schemas()
    committed = {p.relative_to(SCHEMAS).as_posix() for p in SCHEMAS.rglob("*.json")}
    assert committed == set(wanted), "run `lwfm-bus schemas` to regenerate schemas/"
    for rel, schema in wanted.items():
        assert (SCHEMAS / rel).read_text() == render(schema), f"{rel} is stale: run `lwfm-bus schemas`"


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.type)
def test_encoded_events_validate_against_their_schema(event: lb.Event) -> None:
    doc = json.loads(lb.encode_event(event))
    for name in (f"events/{event.type}.json", "events/any.json"):
        schema = json.loads((SCHEMAS / name).read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)


def test_envelope_is_cloudevents_structured_json() -> None:
    event = sample_events()[0]
    doc = json.loads(lb.encode_event(event))
    assert doc["specversion"] == "1.0"
    assert {"id", "source", "type", "time", "datacontenttype", "data"} <= set(doc)
    assert doc["schemaversion"] == 1
    assert doc["subject"] == "j1"


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "a>", "a b", "tab\t", "x" * 129, "naïve"])
def test_bad_tokens_are_rejected_before_publishing(bad: str) -> None:
    with pytest.raises(lb.InvalidTokenError):
        lb.check_token(bad)
    with pytest.raises(ValueError, match=r"job_id|site"):
        lb.JobStatus(job_id=bad, site="s", state=lb.JobState.RUNNING)


def test_filters_validate_their_tokens() -> None:
    with pytest.raises(lb.InvalidTokenError):
        lb.workflow_filter("w.1")
    with pytest.raises(lb.InvalidTokenError):
        lb.job_filter(">")
    assert lb.workflow_filter("w1") == "lwfm.*.*.w1.>"
    assert lb.data_filter() == "lwfm.*.data.>"


def test_subjects_follow_the_documented_hierarchy() -> None:
    got = [e.nats_subject() for e in sample_events("hpc1")]
    assert got == [
        "lwfm.hpc1.job.wf1.j1.RUNNING",
        "lwfm.hpc1.data.wf1.j1.arrived",
        "lwfm.hpc1.trigger._.t1.registered",
        "lwfm.hpc1.trigger._.t1.fired",
        "lwfm.hpc1.trigger._.t2.expired",
        "lwfm.hpc1.trigger._.t3.failed",
        "lwfm.hpc1.trigger._.t4.cancelled",
        "lwfm.hpc1.trigger._.t5.deadline",
        "lwfm.hpc1.trigger._.t6.tick",
        "lwfm.hpc1.site._._.heartbeat",
        "lwfm.hpc1.workflow.wf1._.defined",
        "lwfm.hpc1.workspace._.ws1.add",
    ]


@pytest.mark.parametrize(
    "metadata",
    [{"bad key": 1}, {"k": None}, {"k": {"nested": 1}}, {"k": float("nan")}, {f"k{i}": i for i in range(200)}],
)
def test_metadata_is_typed_and_bounded(metadata: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="metadata"):
        lb.DataArrival(data_id="d", site="s", location="/x", metadata=metadata)  # type: ignore[arg-type]


def test_metadata_keeps_value_types() -> None:
    d = lb.DataArrival(data_id="d", site="s", location="/x", metadata={"i": 1, "f": 1.0, "b": True, "s": "1"})
    back = lb.decode_event(lb.encode_event(lb.make_event(d, source="/t")))
    assert isinstance(back, lb.DataEvent)
    assert back.data.metadata == {"i": 1, "f": 1.0, "b": True, "s": "1"}
    assert [type(v) for v in back.data.metadata.values()] == [int, float, bool, str]


def test_state_order_handles_skipped_and_late_states() -> None:
    S = lb.JobState
    assert S.COMPLETE.at_or_after(S.RUNNING)
    assert not S.FAILED.at_or_after(S.COMPLETE)
    assert S.INFO.at_or_after(S.RUNNING)
    assert not S.RUNNING.supersedes(S.COMPLETE)
    assert S.COMPLETE.supersedes(S.PENDING)
    assert {s for s in S if s.is_terminal} == {S.COMPLETE, S.FAILED, S.CANCELLED}


def test_load_config_reads_only_the_mapping_given() -> None:
    cfg = lb.load_config(
        {"LWFM_BUS_URL": "nats://a:4222, nats://b:4222", "LWFM_BUS_TOKEN": "t0ken", "LWFM_BUS_SITE": "hpc1"}
    )
    assert cfg.servers == ("nats://a:4222", "nats://b:4222")
    assert cfg.site == "hpc1"
    assert cfg.token is not None
    assert "t0ken" not in repr(cfg)
    with pytest.raises(lb.ConfigError, match="site"):
        lb.load_config({"LWFM_BUS_SITE": "bad.site"})
    with pytest.raises(lb.ConfigError, match="not a URL"):
        lb.load_config({"LWFM_BUS_URL": "localhost"})
