"""A step on another machine gets nothing of this machine's: no directory, no bus home (issue 22, item 2).

A pipeline whose steps ran on Slurm over SSH, as another user, failed: the steps
inherited this machine's pipeline directory as their working directory and this
machine's ``--home``, whose index lock the other user may not take.  The compiled plan
is checked here (no bus); tests/sites/test_remote_homes.py checks, on the real sshd and
Slurm, that a job without a directory runs in its job directory with a home of its own.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._plan import compile_plan
from lwfm_bus._query import DataQuery, DataRecord


async def _nothing(query: DataQuery) -> list[DataRecord]:
    return []


async def test_a_remote_step_starts_in_its_job_directory_with_its_own_home(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent("""\
            pipeline: 1
            name: p
            requirements: [numpy]
            steps:
              here:
                run: [sh, -c, 'true']
                outputs: {out: result.txt}
              there:
                site: hpc
                run: [sh, -c, 'true']
                outputs: {out: result.txt}
              placed:
                site: hpc
                cwd: /scratch/run
                run: [sh, -c, 'true']
        """)
    )
    pipeline = load_pipeline(path, sites={"local", "hpc"})
    plan = await compile_plan(
        pipeline, "wf", _nothing, home=Path("/home/me/.lwfm-bus"), local=lambda site: site == "local"
    )
    jobs = {j.step: j.defn for j in plan.jobs}

    assert jobs["here"].cwd == str(tmp_path)
    assert "/home/me/.lwfm-bus" in jobs["here"].argv
    assert str(tmp_path / "result.txt") in " ".join(jobs["here"].argv)

    assert jobs["there"].cwd is None  # its site's job directory
    assert not any(".lwfm-bus" in word for word in jobs["there"].argv)  # no home of this machine's
    assert str(tmp_path) not in " ".join(jobs["there"].argv)  # nor any of its directories
    assert '"out":"result.txt"' in " ".join(jobs["there"].argv)  # resolved where it runs

    assert jobs["placed"].cwd == "/scratch/run"  # as written, on the site
