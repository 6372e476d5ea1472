"""The seeds' own trigger calls (3b, 3c, 3d) in a plain script, on the embedded default.

No server is configured: the sync bus starts the embedded nats-server for its home and,
being alone, runs a trigger engine in-process -- exactly what a laptop user gets.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import lwfm_bus as lb


@pytest.fixture
def laptop(tmp_path: Path) -> Iterator[lb.BusConfig]:
    config = lb.BusConfig(home=tmp_path / "home")  # embedded: no servers given
    try:
        yield config
    finally:
        lb.sync_close()


def _py(code: str, config: lb.BusConfig) -> lb.SyncJob:
    return lb.make_job([sys.executable, "-c", code], config=config)


def test_seed_3b_b_after_a(laptop: lb.BusConfig) -> None:
    job_a = _py("print('A')", laptop)
    job_b = _py("print('B')", laptop)
    lb.set_job_trigger(job_b, job_a)  # before A exists on the bus
    job_a.submit()
    final = job_b.wait(timeout=60)
    assert final.state is lb.JobState.COMPLETE
    assert final.parent_ids == (job_a.job_id,)
    assert job_b.logs() == b"B\n"
    with pytest.raises(lb.JobError, match="started by trigger"):
        job_b.submit()


def test_seed_3c_join(laptop: lb.BusConfig) -> None:
    job_a1 = _py("print('A1')", laptop)
    job_a2 = _py("print('A2')", laptop)
    job_b = _py("print('B')", laptop)
    lb.set_job_trigger(job_b, [job_a1, job_a2])
    job_a1.submit()
    job_a2.submit()
    final = job_b.wait(timeout=60)
    assert final.state is lb.JobState.COMPLETE
    assert sorted(final.parent_ids) == sorted([job_a1.job_id, job_a2.job_id])
    assert job_a1.status().state is lb.JobState.COMPLETE
    assert job_a2.status().state is lb.JobState.COMPLETE


def test_seed_3d_data_flow_in_one_call(laptop: lb.BusConfig, tmp_path: Path) -> None:
    out = tmp_path / "mesh.h5"
    job_b = _py("print('B')", laptop)
    lb.set_data_trigger(job_b, {"kind": "mesh", "step": {"op": "range", "ge": 3}})
    # A job that writes data and announces it with metadata (not necessarily a job: 3d).
    job_a = lb.make_job(
        [
            sys.executable,
            "-c",
            "import sys, lwfm_bus as lb; open(sys.argv[1], 'w').write('x'); "
            "lb.emit_data(sys.argv[1], {'kind': 'mesh', 'step': 2}); "
            "lb.emit_data(sys.argv[1], {'kind': 'mesh', 'step': 3})",
            str(out),
        ],
        config=laptop,
    )
    job_a.submit()
    final = job_b.wait(timeout=60)
    assert final.state is lb.JobState.COMPLETE
    assert final.parent_ids == (job_a.job_id,)  # the job that produced the data
    assert job_a.wait(timeout=60).state is lb.JobState.COMPLETE
