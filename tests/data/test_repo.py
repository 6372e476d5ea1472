"""The metadata repository with a real nats-server: notate, find, put/get, provenance.

Every record reaches ``find`` through the stream (notate publishes; the index catches
up from the stream before each query), so these tests exercise the projection too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
from pathlib import Path

import aiosqlite
import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._index import _data as _index_data


async def _ids(bus: lb.Bus, where: dict[str, object], **options: object) -> set[str]:
    page = await bus.find(where, limit=1000, **options)
    return {r.location for r in page.records}


@pytest.fixture
async def catalogue(bus: lb.Bus) -> lb.Bus:
    """Six records covering every value type, lists, and an empty list."""
    rows: list[tuple[str, dict[str, object]]] = [
        ("/d/a", {"sample": "s1", "step": 1, "ok": True, "score": 0.5, "tags": ["raw", "mesh"]}),
        ("/d/b", {"sample": "s1", "step": 2, "ok": False, "score": 1.5, "tags": ["mesh"]}),
        ("/d/c", {"sample": "s2", "step": 3, "ok": True, "score": 2.5, "tags": []}),
        ("/d/d", {"sample": "s10", "step": 4, "name": "run-004.vtk"}),
        ("/d/e", {"sample": "t1", "step": "5", "name": "run-005.csv"}),
        ("/d/f", {"step": 1.0, "count": [3, 7, 11]}),
    ]
    for location, metadata in rows:
        await bus.notate(location, metadata)
    return bus


# --------------------------------------------------------------------- every predicate kind


async def test_equality_keeps_types_apart(catalogue: lb.Bus) -> None:
    bus = catalogue
    assert await _ids(bus, {"sample": "s1"}) == {"/d/a", "/d/b"}
    assert await _ids(bus, {"step": 1}) == {"/d/a", "/d/f"}  # 1 and 1.0 are the same number
    assert await _ids(bus, {"step": "5"}) == {"/d/e"}  # the string "5" is not the number 5
    assert await _ids(bus, {"step": 5}) == set()
    assert await _ids(bus, {"ok": True}) == {"/d/a", "/d/c"}
    assert await _ids(bus, {"ok": 1}) == set()  # True is not 1
    assert await _ids(bus, {"tags": "mesh"}) == {"/d/a", "/d/b"}  # a list contains the value


async def test_glob_range_and_presence(catalogue: lb.Bus) -> None:
    bus = catalogue
    assert await _ids(bus, {"sample": lb.Glob(pattern="s?")}) == {"/d/a", "/d/b", "/d/c"}
    assert await _ids(bus, {"sample": {"op": "glob", "pattern": "s*"}}) == {"/d/a", "/d/b", "/d/c", "/d/d"}
    assert await _ids(bus, {"name": lb.Glob(pattern="run-00[4-9].vtk")}) == {"/d/d"}
    assert await _ids(bus, {"name": lb.Glob(pattern="*.csv")}) == {"/d/e"}
    assert await _ids(bus, {"step": lb.Range(ge=2, lt=4)}) == {"/d/b", "/d/c"}
    assert await _ids(bus, {"score": lb.Range(gt=0.5)}) == {"/d/b", "/d/c"}
    assert await _ids(bus, {"count": lb.Range(ge=10)}) == {"/d/f"}  # one element in range suffices
    assert await _ids(bus, {"tags": lb.Present()}) == {"/d/a", "/d/b", "/d/c"}  # an empty list is present
    assert await _ids(bus, {"name": {"op": "present"}}) == {"/d/d", "/d/e"}


async def test_predicates_combine_with_and(catalogue: lb.Bus) -> None:
    bus = catalogue
    assert await _ids(bus, {"sample": lb.Glob(pattern="s*"), "step": lb.Range(ge=2)}) == {"/d/b", "/d/c", "/d/d"}
    assert await _ids(bus, {"sample": "s1", "ok": False, "tags": "mesh"}) == {"/d/b"}
    assert await _ids(bus, {"sample": "s1", "name": lb.Present()}) == set()


async def test_find_agrees_with_the_trigger_signature_semantics(catalogue: lb.Bus) -> None:
    """find and a data-flow trigger read one signature the same way, on every record."""
    bus = catalogue
    signatures: list[dict[str, object]] = [
        {"sample": lb.Glob(pattern="s*"), "step": lb.Range(ge=2)},
        {"tags": lb.Present(), "ok": True},
        {"count": 7},
        {"step": lb.Range(le=1.0)},
    ]
    everything = (await bus.find(limit=1000)).records
    for signature in signatures:
        trigger = lb.DataTrigger.model_validate({"signature": signature, "downstream": {"job": {"argv": ["true"]}}})
        expected = {r.location for r in everything if trigger.matches(r.metadata, r.site, r.workflow_id)}
        assert await _ids(bus, signature) == expected, signature


async def test_sorting_and_pages(bus: lb.Bus) -> None:
    for i in range(7):
        await bus.notate(f"/p/{i}", {"batch": "x", "size_mb": (i * 3) % 7, "label": f"l{6 - i}"})
    page = await bus.find({"batch": "x"}, limit=3)
    assert [r.location for r in page.records] == ["/p/0", "/p/1", "/p/2"]
    assert page.next_offset == 3
    page = await bus.find({"batch": "x"}, limit=3, offset=6)
    assert [r.location for r in page.records] == ["/p/6"] and page.next_offset is None
    newest = await bus.find({"batch": "x"}, limit=2, descending=True)
    assert [r.location for r in newest.records] == ["/p/6", "/p/5"]
    by_label = await bus.find({"batch": "x"}, order_by="meta:label", limit=7)
    assert [r.metadata["label"] for r in by_label.records] == [f"l{i}" for i in range(7)]
    by_number = await bus.find({"batch": "x"}, order_by="meta:size_mb", descending=True, limit=1)
    assert by_number.records[0].metadata["size_mb"] == 6


async def test_filters_by_site_workflow_and_job(bus: lb.Bus) -> None:
    ctx = lb.JobContext(job_id="producer-1", site="local", workflow_id="wf-1")
    await bus.notate("/w/1", {"k": 1}, job=ctx)
    await bus.notate("/w/2", {"k": 1})
    await bus.notate("gsiftp://far/3", {"k": 1}, site="hpc1")
    assert await _ids(bus, {"k": 1}, workflow_id="wf-1") == {"/w/1"}
    assert await _ids(bus, {"k": 1}, job_id="producer-1") == {"/w/1"}
    assert await _ids(bus, {"k": 1}, site="hpc1") == {"gsiftp://far/3"}
    assert await _ids(bus, {}, site="local") == {"/w/1", "/w/2"}


# --------------------------------------------------------------------- both query plans, against brute force


def _random_metadata(rng: random.Random) -> dict[str, object]:
    md: dict[str, object] = {}
    if rng.random() < 0.9:
        md["sample"] = rng.choice(["s1", "s2", "s10", "t1", "t20"])
    if rng.random() < 0.8:
        md["step"] = rng.choice([0, 1, 2, 2.5, 3, 4, "3"])
    if rng.random() < 0.5:
        md["ok"] = rng.random() < 0.5
    if rng.random() < 0.4:
        md["tags"] = rng.sample(["raw", "mesh", "final", "x"], rng.randrange(0, 3))
    return md


async def test_both_query_plans_agree_with_brute_force(tmp_path: Path) -> None:
    """The planner may drive from a predicate or walk the records: both give the exact answer.

    The index's projection and ``find`` are exercised directly on a SQLite file (no
    server: the stream is not what is under test here), with random metadata.
    """
    rng = random.Random(42)
    events = [
        lb.make_event(lb.DataArrival(data_id=f"d{i}", site="local", location=f"/r/{i}", metadata=_random_metadata(rng)),
                      source="/test")
        for i in range(400)
    ]  # fmt: skip
    signatures: list[dict[str, object]] = [
        {"sample": "s1"},
        {"sample": lb.Glob(pattern="s*"), "step": lb.Range(ge=2)},
        {"step": lb.Range(gt=1, le=3), "ok": True},
        {"tags": "mesh", "sample": lb.Glob(pattern="?1")},
        {"tags": lb.Present(), "step": "3"},
        {"ok": False, "sample": lb.Present(), "step": lb.Range(lt=2.5)},
        {},
    ]
    async with aiosqlite.connect(tmp_path / "idx.sqlite") as db:
        db.row_factory = aiosqlite.Row
        await db.executescript(_index_data.DATA_SCHEMA)
        await _index_data.install_functions(db)
        for seq, event in enumerate(events, start=1):
            assert isinstance(event, lb.DataEvent)
            await _index_data.apply_data_many(db, [(event, seq)])
        await _index_data.apply_data_many(db, [(events[0], 999)])  # a replayed event changes nothing
        for signature in signatures:
            trigger = lb.DataTrigger.model_validate({"signature": signature, "downstream": {"job": {"argv": ["x"]}}})
            expected = [e.data.location for e in events if trigger.matches(e.data.metadata, "local", None)]
            for cap in (1, 10**6):  # walk the records / drive from the most selective condition
                query = lb.DataQuery(where=trigger.signature, limit=1000)
                page = await _index_data.find(db, query, cap=cap, ceiling=cap)
                assert [r.location for r in page.records] == expected, (signature, cap)
                # and page by page, newest first
                got: list[str] = []
                offset: int | None = 0
                while offset is not None:
                    q = lb.DataQuery(where=trigger.signature, limit=7, offset=offset, descending=True)
                    page = await _index_data.find(db, q, cap=cap, ceiling=cap)
                    got += [r.location for r in page.records]
                    offset = page.next_offset
                assert got == expected[::-1], (signature, cap)


# --------------------------------------------------------------------- what a notation records


async def test_a_local_file_gets_size_checksum_and_an_absolute_path(
    bus: lb.Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "out.dat"
    f.write_bytes(b"x" * 1000)
    monkeypatch.chdir(tmp_path)
    record = await bus.notate("out.dat", {"kind": "result"})
    assert record.location == str(f)
    assert record.size == 1000
    assert record.checksum == "sha256:" + hashlib.sha256(b"x" * 1000).hexdigest()
    assert record.job_id is None
    stored = await bus.data(record.data_id)
    assert (stored.location, stored.size, stored.checksum, stored.metadata) == (
        str(f), 1000, record.checksum, {"kind": "result"},
    )  # fmt: skip
    with pytest.raises(lb.UnknownDataError):
        await bus.data("no-such-data")


async def test_a_job_that_notates_is_recorded_as_the_producer(bus: lb.Bus, tmp_path: Path) -> None:
    out = tmp_path / "made.txt"
    code = (
        "import pathlib, sys, lwfm_bus as lb\n"
        "pathlib.Path(sys.argv[1]).write_text('made')\n"
        "lb.notate(sys.argv[1], {'made_by': 'job'})\n"
        "lb.sync_close()\n"
    )
    wf = await bus.define_workflow("notating")
    job = await bus.submit(lb.JobDefn.of([sys.executable, "-c", code, str(out)]), workflow=wf)
    assert (await job.wait(timeout=60)).state is JobState.COMPLETE
    page = await bus.find({"made_by": "job"})
    [record] = page.records
    assert (record.job_id, record.workflow_id, record.location, record.size) == (
        job.job_id, wf.workflow_id, str(out), 4,
    )  # fmt: skip


# --------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"bad key": 1}, "metadata"),
        ({"1starts_with_digit": 1}, "metadata"),
        ({"k": {"nested": 1}}, "metadata.k"),
        ({"k": None}, "metadata.k"),
        ({"k": float("nan")}, "finite"),
        ({"k": "x" * 5000}, "metadata.k"),
        ({"k": list(range(300))}, "metadata.k"),
        ({f"k{i}": i for i in range(200)}, "metadata"),
    ],
)
async def test_bad_metadata_is_refused_and_nothing_is_recorded(
    bus: lb.Bus, metadata: dict[str, object], words: str
) -> None:
    before = (await bus.find(limit=1000)).records
    with pytest.raises(lb.DataError, match=words):
        await bus.notate("/x", metadata)
    assert (await bus.find(limit=1000)).records == before


async def test_metadata_over_the_event_size_limit_is_refused(bus: lb.Bus) -> None:
    big = {f"k{i}": "v" * 4000 for i in range(100)}  # within every per-value bound, 400 KB in all
    with pytest.raises(lb.DataError, match="too large"):
        await bus.notate("/x", big)
    assert (await bus.find(limit=10)).records == []


@pytest.mark.parametrize(
    ("where", "options", "words"),
    [
        ({"bad key": 1}, {}, "where"),
        ({"k": {"op": "range"}}, {}, "at least one"),
        ({"k": {"op": "regex", "pattern": "."}}, {}, "where.k"),
        ({}, {"limit": 0}, "limit"),
        ({}, {"limit": 10**6}, "limit"),
        ({}, {"order_by": "meta:bad key"}, "order_by"),
        ({}, {"site": "a.b"}, "site"),
    ],
)
async def test_bad_queries_name_the_field(
    bus: lb.Bus, where: dict[str, object], options: dict[str, object], words: str
) -> None:
    with pytest.raises(lb.DataError, match=words):
        await bus.find(where, **options)


# --------------------------------------------------------------------- put / get


async def test_put_and_get_copy_checksum_and_notate(bus: lb.Bus, tmp_path: Path) -> None:
    src = tmp_path / "in" / "mesh.vtk"
    src.parent.mkdir()
    src.write_bytes(os.urandom(4096))
    digest = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    site_path = str(tmp_path / "site" / "meshes" / "mesh.vtk")

    put = await bus.put(src, site_path, {"kind": "mesh", "res": 3})
    assert Path(site_path).read_bytes() == src.read_bytes()
    assert (put.site, put.location, put.checksum, put.size) == ("local", site_path, digest, 4096)
    assert (put.direction, put.origin_site, put.origin) == ("put", "local", str(src))

    back = tmp_path / "back" / "mesh.vtk"
    got = await bus.get(site_path, back, {"fetched": True})
    assert back.read_bytes() == src.read_bytes()
    assert (got.location, got.checksum, got.direction, got.origin) == (str(back), digest, "get", site_path)
    assert got.metadata == {"kind": "mesh", "res": 3, "fetched": True}  # the original's, plus ours
    assert await _ids(bus, {"kind": "mesh"}) == {site_path, str(back)}


async def test_a_failed_put_records_nothing(bus: lb.Bus, tmp_path: Path) -> None:
    with pytest.raises(lb.DataError, match="not a readable file"):
        await bus.put(tmp_path / "missing", str(tmp_path / "dest"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    src = tmp_path / "src"
    src.write_text("data")
    with pytest.raises(lb.DataError, match="put"):
        await bus.put(src, str(blocker / "below" / "x"))  # a parent that is a file
    with pytest.raises(lb.DataError, match="not absolute"):
        await bus.put(src, "relative/path")
    assert (await bus.find(limit=10)).records == []


async def test_put_fires_a_data_flow_trigger_end_to_end(bus: lb.Bus, tmp_path: Path) -> None:
    """Seed 3d through the repository: a put alone starts the downstream job."""
    marker = tmp_path / "downstream-ran"
    async with lb.serve_engine(bus, lb.EngineConfig(ack_wait_s=2)):
        trigger = await bus.set_data_trigger(
            lb.JobDefn.of(["touch", str(marker)]), {"kind": "mesh", "res": lb.Range(ge=2)}
        )
        src = tmp_path / "mesh.vtk"
        src.write_text("mesh")
        put = await bus.put(src, str(tmp_path / "site" / "mesh.vtk"), {"kind": "mesh", "res": 3})

        async def fired() -> lb.TriggerFired:
            async with bus.subscribe(f"lwfm.*.trigger.*.{trigger.trigger_id}.fired", from_start=True) as events:
                async for event in events:
                    assert isinstance(event, lb.TriggerFiredEvent)
                    return event.data
            raise AssertionError("a followed subscription ended")  # pragma: no cover

        firing = await asyncio.wait_for(fired(), 30)
        assert firing.downstream_job_id is not None
        status = await bus.wait(firing.downstream_job_id, timeout=30)
    assert status.state is JobState.COMPLETE
    assert marker.exists()
    assert firing.cause_event_ids  # the put's data event
    assert put.data_id


# --------------------------------------------------------------------- provenance and rebuild


async def test_provenance_follows_the_upstream_chain(bus: lb.Bus, tmp_path: Path) -> None:
    wf = await bus.define_workflow("chain")
    a = await bus.submit(lb.JobDefn.of(["true"]), workflow=wf)
    await a.wait(timeout=30)
    b = await bus.submit(lb.JobDefn.of(["true"]), workflow=wf, parents=[a.job_id])
    await b.wait(timeout=30)
    c = await bus.submit(lb.JobDefn.of(["true"]), workflow=wf, parents=[b.job_id])
    await c.wait(timeout=30)
    ctx = lb.JobContext(job_id=c.job_id, workflow_id=wf.workflow_id, parent_ids=(b.job_id,))
    record = await bus.notate("/result", {"final": True}, job=ctx)
    prov = await bus.provenance(record.data_id)
    assert prov.job is not None and prov.job.job_id == c.job_id
    assert [j.job_id for j in prov.ancestors] == [b.job_id, a.job_id]
    assert all(j.state is JobState.COMPLETE for j in prov.ancestors)


async def test_the_index_is_rebuilt_from_the_stream(bus_config: lb.BusConfig) -> None:
    async with lb.connect(bus_config) as bus:
        for i in range(20):
            await bus.notate(f"/r/{i}", {"i": i, "even": i % 2 == 0})
        before = await bus.find({"even": True}, limit=100)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{bus_config.home / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    async with lb.connect(bus_config) as bus:
        after = await bus.find({"even": True}, limit=100)
    assert [r.location for r in after.records] == [r.location for r in before.records]
    assert len(after.records) == 10
    assert [r.data_id for r in after.records] == [r.data_id for r in before.records]
