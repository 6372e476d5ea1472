"""``lwfm-bus run`` after an interruption: Ctrl-C says how to resume or cancel, ``--resume``
refuses a workflow that is not a run of this pipeline, a lost bus is one line.

Each test runs the real command (``python -m lwfm_bus``) with a fresh home; the first
command starts the home's background bus, stopped at the end with ``lwfm-bus down``.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "lwfm_bus"]
TIMEOUT = 120


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    yield path
    subprocess.run([*CLI, "--home", str(path), "down"], capture_output=True, timeout=TIMEOUT)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--home", str(home), *args], capture_output=True, text=True, timeout=TIMEOUT)


def _said(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The command's stderr lines, but the one that says it started the home's background bus."""
    return [line for line in result.stderr.splitlines() if not line.startswith("lwfm-bus: nothing was running")]


def _pipeline(tmp_path: Path, name: str, command: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            pipeline: 1
            name: {name}
            steps:
              work:
                run: [sh, -c, {command!r}]
        """)
    )
    return path


class _Lines:
    """A running command's stdout, line by line, each waited for at most ``TIMEOUT`` seconds."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        out = proc.stdout

        def pump() -> None:
            for line in out:
                self.lines.put(line)
            self.lines.put(None)

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def until(self, wanted: str) -> str:
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            assert line is not None, f"ended before {wanted!r}: {self.seen}"
            self.seen.append(line)
            if wanted in line:
                return line


def _workflow_id(first_line: str) -> str:
    assert first_line.startswith("run "), first_line
    return first_line.split()[1]


def _interrupted(
    home: Path, path: Path, interrupt: Callable[[subprocess.Popen[str], _Lines], None]
) -> tuple[str, int, str]:
    """``run PATH``, interrupted by ``interrupt`` once it said its workflow id: (workflow id, exit code, stderr)."""
    with subprocess.Popen(
        [*CLI, "--home", str(home), "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            lines = _Lines(proc)
            wf = _workflow_id(lines.until("run "))
            interrupt(proc, lines)
            code = proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        lines.thread.join(timeout=TIMEOUT)
        assert proc.stderr is not None
        return wf, code, proc.stderr.read()


def test_ctrl_c_says_how_to_resume_and_cancel_and_resume_completes(tmp_path: Path, home: Path) -> None:
    go = tmp_path / "go"
    path = _pipeline(tmp_path, "slow", f"while [ ! -e {go} ]; do sleep 0.1; done")

    def ctrl_c(proc: subprocess.Popen[str], lines: _Lines) -> None:
        lines.until("RUNNING")
        proc.send_signal(signal.SIGINT)

    wf, code, stderr = _interrupted(home, path, ctrl_c)
    assert code == 130
    resume = f"lwfm-bus run {path} --resume {wf}"
    assert resume in stderr
    assert f"lwfm-bus workflow cancel {wf}" in stderr
    assert "Traceback" not in stderr

    go.touch()
    resumed = _cli(home, "run", str(path), "--resume", wf)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"slow ({wf}): complete" in resumed.stdout


def test_resume_refuses_a_workflow_that_is_not_a_run_of_this_pipeline(tmp_path: Path, home: Path) -> None:
    mine = _pipeline(tmp_path, "mine", "true")
    other = _pipeline(tmp_path, "other", "true")

    unknown = _cli(home, "run", str(mine), "--resume", "nosuchrun")
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert _said(unknown) == ["lwfm-bus: error: no workflow 'nosuchrun' is known"]

    ran = _cli(home, "run", str(other))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    other_wf = _workflow_id(ran.stdout.splitlines()[0])
    theirs = _cli(home, "run", str(mine), "--resume", other_wf)
    assert theirs.returncode == 2, theirs.stdout + theirs.stderr
    assert _said(theirs) == [f"lwfm-bus: error: {other_wf!r} is a run of pipeline 'other', not of 'mine'"]

    submitted = _cli(home, "submit", "--workflow", "plainwf", "--wait", "true")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    plain = _cli(home, "run", str(mine), "--resume", "plainwf")
    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert _said(plain) == ["lwfm-bus: error: 'plainwf' is not a pipeline run (a workflow with 1 job)"]
    # nothing of 'mine' was started in any of them
    assert "run " not in unknown.stdout + theirs.stdout + plain.stdout

    # and a run of this pipeline is resumed as before
    first = _cli(home, "run", str(mine))
    assert first.returncode == 0, first.stdout + first.stderr
    again = _cli(home, "run", str(mine), "--resume", _workflow_id(first.stdout.splitlines()[0]))
    assert again.returncode == 0, again.stdout + again.stderr


def test_resume_runs_again_what_failed_and_nothing_that_completed(tmp_path: Path, home: Path) -> None:
    """A step that failed -- its runner could not reach the bus, or its command was fixed since
    -- runs again on resume, as a new attempt; what completed does not.  Before, a resumed run
    kept the failed job's id and ended FAILED at once."""
    flag, out = tmp_path / "fixed", tmp_path / "ran.txt"
    path = tmp_path / "chain.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            pipeline: 1
            name: chain
            steps:
              first:
                run: [sh, -c, 'echo first >> {out}']
              flaky:
                after: first
                run: [sh, -c, 'test -e {flag} && echo flaky >> {out}']
              last:
                after: flaky
                run: [sh, -c, 'echo last >> {out}']
        """)
    )
    failed = _cli(home, "run", str(path))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    wf = _workflow_id(failed.stdout.splitlines()[0])
    assert out.read_text() == "first\n"

    flag.touch()
    resumed = _cli(home, "run", str(path), "--resume", wf)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"chain ({wf}): complete" in resumed.stdout
    assert out.read_text() == "first\nflaky\nlast\n"  # first did not run again

    shown = _cli(home, "workflow", "show", wf, "--json")
    assert shown.returncode == 0, shown.stderr
    states = sorted((j["name"], j["state"]) for j in json.loads(shown.stdout)["jobs"])
    assert states == [
        ("chain:first", "COMPLETE"),
        ("chain:flaky", "COMPLETE"),  # the new attempt
        ("chain:flaky", "FAILED"),  # the first attempt, kept in the record
        ("chain:last", "COMPLETE"),
    ]
    again = _cli(home, "run", str(path), "--resume", wf)  # nothing is left to run
    assert again.returncode == 0, again.stdout + again.stderr
    assert out.read_text() == "first\nflaky\nlast\n"


def test_a_bus_lost_mid_run_is_one_line_and_resume_completes_the_run(tmp_path: Path, home: Path) -> None:
    """'up' stopped while 'run' registers and submits: one line naming the resume command
    (it was ~460 lines: a reconnect warning a second and an engine traceback per event),
    then the resume completes every step, the steps that failed for want of a bus included."""
    out = tmp_path / "ran"
    out.mkdir()
    path = tmp_path / "fan.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            pipeline: 1
            name: fan
            steps:
              work:
                parallel: 8
                run: [sh, -c, 'touch {out}/work-{{index}}']
              next:
                after: work
                parallel: 8
                run: [sh, -c, 'touch {out}/next-{{index}}']
        """)
    )
    assert _cli(home, "status").returncode == 0  # the home's bus, in the background

    def stop_the_bus(proc: subprocess.Popen[str], lines: _Lines) -> None:
        stopped = _cli(home, "down")
        assert stopped.returncode == 0, stopped.stderr

    wf, code, stderr = _interrupted(home, path, stop_the_bus)
    assert code == 2
    said = stderr.splitlines()
    resume = f"lwfm-bus run {path} --resume {wf}"
    assert len(said) == 1, said
    assert said[0].startswith("lwfm-bus: error: lost the bus (") and said[0].endswith(f"; resume with '{resume}'")

    resumed = _cli(home, "run", str(path), "--resume", wf)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"fan ({wf}): complete" in resumed.stdout
    assert "work  8/8 complete" in resumed.stdout and "next  8/8 complete" in resumed.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}-{i}" for s in ("work", "next") for i in range(8))
