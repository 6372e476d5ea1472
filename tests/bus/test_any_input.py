"""Property: whatever a client publishes on ``lwfm.>``, it is parked with a reason, or every reader takes it.

Readers: the decoder, the index, the engine's trigger index, and the human and
``--json`` printers of ``lwfm-bus events``.  Inputs are any JSON value, and valid
events with one field replaced by any JSON value (or removed), on their own subject
or on another.  Thousands of examples run in-process against a real server (for the
parking); a few hundred more go through a real server to a running engine and the CLI.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lwfm_bus as lb
from lwfm_bus._cli._events import describe
from lwfm_bus._engine._matcher import TriggerIndex, satisfies
from lwfm_bus._events import DecodeFailure, decode_event
from lwfm_bus._index._projection import JobIndex
from tests._helpers import cli_env
from tests.samples import sample_events

_SITE = "local"
_SAMPLES = [json.loads(lb.encode_event(e)) for e in sample_events(_SITE)]
_SUBJECTS = [e.nats_subject() for e in sample_events(_SITE)]
_REASONS = {f.value for f in DecodeFailure}

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


@st.composite
def _message(draw: st.DrawFn) -> tuple[str, bytes]:
    """A subject and the bytes published on it."""
    i = draw(st.integers(min_value=0, max_value=len(_SAMPLES) - 1))
    doc: Any = copy.deepcopy(_SAMPLES[i])
    how = draw(st.sampled_from(["replace", "replace", "remove", "whole", "raw"]))
    if how == "whole":
        doc = draw(_json)
    elif how == "raw":
        return _SUBJECTS[i], draw(st.binary(max_size=200))
    else:
        target = doc
        path = draw(st.sampled_from([[k] for k in doc] + [["data", k] for k in doc["data"]]))
        for key in path[:-1]:
            target = target[key]
        if how == "remove":
            target.pop(path[-1], None)
        else:
            target[path[-1]] = draw(_json)
    if draw(st.booleans()):
        subject = _SUBJECTS[i]
    else:
        subject = "lwfm." + ".".join(draw(st.lists(_token, min_size=2, max_size=6)))
    return subject, json.dumps(doc).encode()


def _one_visible_line(text: str) -> bool:
    return not any(unicodedata.category(ch).startswith("C") or ch in "\u2028\u2029" for ch in text)


async def _every_reader_takes(event: lb.Event, seq: int, index: JobIndex, triggers: TriggerIndex) -> None:
    # The index stores it, or parks it (a reason) -- it never raises.
    await index._apply_batch([(event, seq)])
    if isinstance(event, lb.JobStatusEvent):
        await index.job(event.data.job_id)
        for _watch, mask in triggers.by_job(event.data.job_id):
            satisfies(mask, event.data.state)
    elif isinstance(event, lb.DataEvent):
        d = event.data
        triggers.by_data(d.metadata, d.site, d.workflow_id)
        await index.data_record(d.data_id)
        for key, value in list(d.metadata.items())[:2]:
            if not isinstance(value, list):
                await index.find(lb.DataQuery(where={key: lb.Eq(value=value)}))
    elif isinstance(event, lb.TriggerRegisteredEvent):
        triggers.add(event.data.definition, seq)
        triggers.remove(event.data.trigger_id)
    # The printers: one visible line for people, the exact event for machines.
    assert _one_visible_line(describe(event))
    assert decode_event(lb.encode_event(event), None, event.nats_subject()) == event


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(message=_message())
async def test_any_message_is_parked_with_a_reason_or_taken_by_every_reader(
    bus: lb.Bus, tmp_path: Path, message: tuple[str, bytes]
) -> None:
    subject, raw = message
    index = _INDEXES.get(id(bus))
    if index is None:
        index = _INDEXES[id(bus)] = await JobIndex(tmp_path / "index.sqlite", bus).__aenter__()
    try:
        event: lb.Event | None = decode_event(raw, bus.config.max_event_bytes, subject)
    except lb.EventDecodeError as err:
        event, reason, detail = None, err.reason.value, str(err)
    if event is None:
        assert reason in _REASONS and detail  # parked with a reason (a dead letter's subject token)
        return
    _SEQ[0] += 1
    await _every_reader_takes(event, _SEQ[0], index, _TRIGGERS)


_INDEXES: dict[int, JobIndex] = {}
_TRIGGERS = TriggerIndex()
_SEQ = [0]


@pytest.fixture(autouse=True)
async def _close_indexes() -> Any:
    yield
    for index in _INDEXES.values():
        await index.__aexit__(None, None, None)
    _INDEXES.clear()


# ------------------------------------------------------------------ end to end, through a real server


async def _cli(config: lb.BusConfig, *args: str) -> tuple[int, str, str]:
    env = cli_env()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lwfm_bus", "--home", str(config.home), "--url", config.servers[0], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(messages=st.lists(_message(), min_size=100, max_size=100))
async def test_a_running_engine_and_the_cli_take_any_burst(
    bus: lb.Bus, bus_config: lb.BusConfig, messages: list[tuple[str, bytes]]
) -> None:
    async with lb.serve_engine(bus, lb.EngineConfig(ack_wait_s=5)) as engine:
        up, down = lb.new_id(), lb.new_id()
        await bus.set_job_trigger(lb.JobDefn.of(["true"]), up, job_id=down)
        for subject, raw in messages:
            await bus.jetstream.publish(subject, raw)
        await bus.publish(lb.make_event(lb.JobStatus(job_id=up, site=_SITE, state=lb.JobState.COMPLETE), source="/t"))
        assert (await bus.wait(down, timeout=60)).state is lb.JobState.COMPLETE  # the engine kept firing
        assert engine.stats.errors == 0
    await bus.jobs()
    await bus.find({})
    for args in (("events", "--all", "--no-follow"), ("events", "--all", "--no-follow", "--json"), ("dead-letters",)):
        code, out, err = await _cli(bus_config, *args)
        assert code == 0, (args, err)
        assert "Traceback" not in err
        if "--json" in args:
            assert all(json.loads(line)["id"] for line in out.splitlines())
        else:
            assert all(_one_visible_line(line) for line in out.splitlines())
