"""A pipeline's retry policy: a step that fails once runs again, and the run goes on after it.

A real embedded bus with its engine and local agent (``lb.connect`` with a fresh home);
the step counts its runs in a file beside the pipeline, so the file says how often it ran.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus._config import BusConfig
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline

# Fails on its first run, completes on the next: one line per run in runs-<name>.log.
_FLAKY = (
    "import sys\np = 'runs-' + sys.argv[1] + '.log'\nopen(p, 'a').write('x\\n')\n"
    "sys.exit(len(open(p).read().split()) < 2)\n"
)


def _pipeline(tmp_path: Path, text: str) -> Path:
    (tmp_path / "flaky.py").write_text(_FLAKY)
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


async def test_a_step_that_fails_once_is_retried_and_the_run_completes(tmp_path: Path) -> None:
    path = _pipeline(
        tmp_path,
        """
        pipeline: 1
        name: retried
        retry: {max_attempts: 2, backoff_s: 0}
        steps:
          flaky:
            run: [python3, flaky.py, flaky]
          after:
            after: flaky
            run: [python3, -c, "pass"]
        """,
    )
    lines: list[str] = []
    async with lb.connect(BusConfig(home=tmp_path / "home")) as bus:
        report = await run_pipeline(bus, load_pipeline(path), lines.append)
        assert report.ok, (report.failures, lines)
        assert report.steps == {"flaky": (1, 1), "after": (1, 1)}
        assert (tmp_path / "runs-flaky.log").read_text().split() == ["x", "x"]
        retried = [line for line in lines if "retried:flaky" in line and "FAILED" in line]
        assert len(retried) == 1 and "retrying in 0s as job" in retried[0], lines
        jobs = await bus.jobs(workflow=report.workflow_id)
        assert sorted((r.name, r.attempt) for r in jobs if r.name == "retried:flaky") == [
            ("retried:flaky", 1),
            ("retried:flaky", 2),
        ]


async def test_a_steps_own_policy_overrides_the_pipelines(tmp_path: Path) -> None:
    path = _pipeline(
        tmp_path,
        """
        pipeline: 1
        name: strict
        retry: {max_attempts: 3, backoff_s: 0}
        steps:
          once:
            run: [python3, flaky.py, once]
            retry: {max_attempts: 1}
        """,
    )
    async with lb.connect(BusConfig(home=tmp_path / "home")) as bus:
        report = await run_pipeline(bus, load_pipeline(path), lambda line: None)
        assert not report.ok
        assert report.failures == ["strict:once: FAILED"]
        assert (tmp_path / "runs-once.log").read_text().split() == ["x"]
