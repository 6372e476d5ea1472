"""Hostile and odd input (issue 16): nothing a client publishes can break a reader.

Every case here was found by publishing raw messages and typing odd values, as a
careless or hostile user would; each test failed before its fix.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._sites._registry import load_sites
from tests._helpers import cli_env

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CLI = [sys.executable, "-m", "lwfm_bus"]
HUGE = 100000000000000000000000000000  # 10**29: beyond SQLite's 64-bit INTEGER


async def _cli(config: lb.BusConfig, *args: str) -> tuple[int, str, str]:
    env = cli_env()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(config.home), "--url", config.servers[0], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _data_event(data_id: str, **metadata: object) -> lb.Event:
    return lb.make_event(
        lb.DataArrival(data_id=data_id, site="local", location=f"/d/{data_id}", metadata={"kind": "x"}),
        source="/t",
    )


def _raw(event: lb.Event, **changes: object) -> bytes:
    """The event as JSON, with fields changed or removed (None removes) as a foreign client would."""
    doc = json.loads(lb.encode_event(event))
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(last)
        else:
            target[last] = value
    return json.dumps(doc).encode()


async def _parked(bus: lb.Bus) -> list[lb.DeadLetter]:
    return [d async for d in bus.dead_letters()]


# ------------------------------------------------------------------ 1. integers beyond int64


def test_out_of_range_integers_are_refused_by_the_models_with_one_reason() -> None:
    with pytest.raises(ValidationError) as caught:
        lb.DataArrival(data_id="d", site="local", location="/d", metadata={"step": HUGE})
    assert caught.value.error_count() == 1 and "integer out of range" in str(caught.value)
    with pytest.raises(ValidationError, match="less than or equal to 9223372036854775807"):
        lb.JobStatus(job_id="j", site="local", state=JobState.FAILED, exit_code=2**63)
    with pytest.raises(ValidationError, match="less than or equal to 9223372036854775807"):
        lb.DataArrival(data_id="d", site="local", location="/d", size=2**63)
    # The bounds themselves are fine, and a large integer never silently becomes a float.
    ok = lb.DataArrival(data_id="d", site="local", location="/d", metadata={"a": 2**63 - 1, "b": -(2**63)})
    assert ok.metadata == {"a": 2**63 - 1, "b": -(2**63)} and isinstance(ok.metadata["a"], int)


def test_a_string_over_the_limit_says_too_long_in_one_line() -> None:
    with pytest.raises(ValidationError) as caught:
        lb.DataArrival(data_id="d", site="local", location="/d", metadata={"note": "x" * 5000})
    assert caught.value.error_count() == 1
    assert "too long (5000 > 4096 characters)" in str(caught.value)


async def test_huge_integers_on_the_wire_are_parked_and_every_lookup_still_works(bus: lb.Bus) -> None:
    job = lb.new_id()
    good_job = lb.make_event(lb.JobStatus(job_id=job, site="local", state=JobState.FAILED, exit_code=3), source="/t")
    bad_job = lb.make_event(lb.JobStatus(job_id=lb.new_id(), site="local", state=JobState.FAILED), source="/t")
    bad_data = _data_event("big")
    await bus.jetstream.publish(bad_job.nats_subject(), _raw(bad_job, data__exit_code=HUGE))
    await bus.jetstream.publish(bad_data.nats_subject(), _raw(bad_data, data__metadata={"step": HUGE}))
    await bus.jetstream.publish(bad_data.nats_subject(), _raw(bad_data, id="other", data__size=HUGE))
    await bus.publish(good_job)
    await bus.publish(_data_event("fine"))

    assert (await bus.status(job)).exit_code == 3
    assert [r.data_id for r in (await bus.find({"kind": "x"})).records] == ["fine"]
    assert [r.data_id for r in (await bus.find({"step": {"op": "range", "ge": 0}})).records] == []
    assert await bus.triggers() == []
    assert {j.job_id for j in await bus.jobs()} == {job}
    assert sorted(d.reason for d in await _parked(bus)) == ["invalid", "invalid", "invalid"]


async def test_notate_refuses_a_huge_integer_with_one_line(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = await _cli(bus_config, "notate", str(tmp_path / "f"), "-m", f"step={HUGE}")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "integer out of range" in err and "Traceback" not in err
    code, _, err = await _cli(bus_config, "find", "--where", f"step>={HUGE}")
    assert code in (0, 2) and "Traceback" not in err and "OverflowError" not in err


async def test_a_range_bound_beyond_int64_finds_nothing_instead_of_failing(bus: lb.Bus) -> None:
    await bus.publish(_data_event("d1"))
    assert (await bus.find({"kind": "x", "n": {"op": "range", "ge": HUGE}})).records == []


# ------------------------------------------------------------------ 2. CloudEvents' required attributes


@pytest.mark.parametrize("missing", ["id", "specversion", "source", "type"])
async def test_an_event_without_a_required_attribute_is_parked(bus: lb.Bus, missing: str) -> None:
    event = lb.make_event(lb.JobStatus(job_id=lb.new_id(), site="local", state=JobState.RUNNING), source="/t")
    await bus.jetstream.publish(event.nats_subject(), _raw(event, **{missing: None}))
    with pytest.raises(lb.UnknownJobError):
        await bus.status(event.data.job_id)  # type: ignore[union-attr]
    [parked] = await _parked(bus)
    assert parked.reason in ("invalid", "unknown-type") and missing in parked.error


def test_the_event_schemas_require_what_the_decoder_requires() -> None:
    for path in sorted((SCHEMAS / "events").glob("lwfm.*.json")):
        required = set(json.loads(path.read_text())["required"])
        assert {"id", "source", "specversion", "type", "data"} <= required, path.name


# ------------------------------------------------------------------ 3. parked once, for good


async def test_a_bad_message_is_parked_with_one_publish_however_many_readers_meet_it(
    bus_config: lb.BusConfig,
) -> None:
    async with lb.connect(bus_config) as bus:
        dlq_publishes: list[str] = []

        async def count(msg: object) -> None:
            dlq_publishes.append(getattr(msg, "subject", ""))

        sub = await bus.nats.subscribe("lwfm-dlq.>", cb=count)
        await bus.jetstream.publish("lwfm.local.job._.x.COMPLETE", b"not json")
        await bus.publish(lb.make_event(lb.JobStatus(job_id="ok", site="local", state=JobState.COMPLETE), source="/t"))
        for _ in range(3):  # three readers, each on a fresh connection, each replaying the whole history
            async with lb.connect(bus_config) as reader, reader.replay("lwfm.>") as history:
                assert [e.subject async for e in history] == ["ok"]
        await bus.nats.flush()
        await sub.unsubscribe()
        assert len(dlq_publishes) == 1 and dlq_publishes[0].startswith("lwfm-dlq.not-json.LWFM.")
        assert len(await _parked(bus)) == 1


# ------------------------------------------------------------------ 6. one line, not one per bad message


async def test_a_cli_reader_says_one_line_for_many_bad_messages(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    for i in range(30):
        await bus.jetstream.publish(f"lwfm.local.job._.bad{i}.COMPLETE", b"{}")
    code, _, err = await _cli(bus_config, "status", "--workflow", "none")
    assert code == 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "30 messages" in lines[0] and "unknown-type: 30" in lines[0] and "lwfm-bus dead-letters" in lines[0]


# ------------------------------------------------------------------ 8. one event id, applied once


async def test_an_event_stored_twice_by_a_foreign_client_is_applied_once(bus: lb.Bus) -> None:
    trigger = await bus.set_job_trigger(lb.JobDefn.of(["true"]), lb.new_id(), job_id=lb.new_id())
    fired = lb.make_event(
        lb.TriggerFired(trigger_id=trigger.trigger_id, site="local", firing_key="k", downstream_job_id="d"),
        source="/foreign",
    )
    job = lb.new_id()
    info = lb.make_event(lb.JobStatus(job_id=job, site="local", state=JobState.INFO, info="hello"), source="/t")
    for event in (fired, fired, info, info):  # no Nats-Msg-Id: the server stores both copies
        await bus.jetstream.publish(event.nats_subject(), lb.encode_event(event))
    stored = await bus.jetstream.stream_info("LWFM")
    assert stored.state.messages >= 5
    record = await bus.trigger(trigger.trigger_id)
    assert record is not None and record.fired == 1
    index = await bus.index()
    assert len(await index.history(job)) == 1


async def test_dead_letters_lists_each_parked_message_on_one_escaped_line(
    bus: lb.Bus, bus_config: lb.BusConfig
) -> None:
    await bus.jetstream.publish("lwfm.local.job._.a.COMPLETE", b"not json\n\x1b[2Kjob FORGED COMPLETE")
    await bus.jetstream.publish("lwfm.local.job._.b.COMPLETE", b"{}")
    await bus.publish(lb.make_event(lb.JobStatus(job_id="ok", site="local", state=JobState.COMPLETE), source="/t"))
    assert (await bus.status("ok")).state is JobState.COMPLETE  # the index has met (and parked) both
    code, out, err = await _cli(bus_config, "dead-letters")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and "\x1b" not in out
    assert "not-json" in lines[0] and "lwfm.local.job._.a.COMPLETE" in lines[0] and "\\x1b[2K" in lines[0]
    assert "unknown-type" in lines[1]
    code, out, _ = await _cli(bus_config, "dead-letters", "--json", "--reason", "unknown-type")
    [doc] = [json.loads(line) for line in out.splitlines()]
    assert doc["subject"] == "lwfm.local.job._.b.COMPLETE" and doc["data"] == "e30="  # base64 of {}


async def test_events_shows_an_event_stored_twice_once(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    event = lb.make_event(lb.JobStatus(job_id="twice", site="local", state=JobState.INFO, info="x"), source="/t")
    for _ in range(2):
        await bus.jetstream.publish(event.nats_subject(), lb.encode_event(event))
    code, out, err = await _cli(bus_config, "events", "--all", "--no-follow")
    assert code == 0, err
    assert len([line for line in out.splitlines() if "twice" in line]) == 1
    code, out, _ = await _cli(bus_config, "events", "--all", "--no-follow", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [event.id]


# ------------------------------------------------------------------ 5. depth and size of files


async def test_deeply_nested_files_get_one_line(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 10_000 + "]" * 10_000)
    deep_toml = tmp_path / "deep.toml"
    deep_toml.write_text("x = " + "[" * 10_000 + "]" * 10_000 + "\n")
    for args in (
        ("trigger", "add", str(deep_json)),
        ("trigger", "add", str(deep_toml)),
        ("find", "--query", str(deep_json)),
    ):
        code, _, err = await _cli(bus_config, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "RecursionError" not in err, err
        assert "deeper than 64" in err or "not valid JSON" in err, err


def test_a_deep_sites_file_is_refused_in_one_line(tmp_path: Path) -> None:
    sites = tmp_path / "sites.toml"
    sites.write_text("[sites.local]\nx = " + "[" * 10_000 + "]" * 10_000 + "\n")
    with pytest.raises(lb.ConfigError, match="nested deeper than 64 levels"):
        load_sites(sites)
