"""A user's first hour with the command line (issue 17, items 6 to 8, 10 and 11): real processes, a real server.

A step whose command does not exist, a site that does not exist, a log asked for too early,
a mistyped command, a relative path, a plural, a federated home reached without its file:
each is one clear line.  ``workflow ls`` and a bare ``status`` give the overview, and
``demo`` ends with commands that work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._cli._print import shown
from lwfm_bus._errors import PipelineError
from lwfm_bus._pipeline import load_pipeline
from lwfm_bus._pipeline._run import run_pipeline
from lwfm_bus.testing import hold_connection
from tests._helpers import wait_state, write_sites

CLI = [sys.executable, "-m", "lwfm_bus"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LWFM_")}


async def _run(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """``lwfm-bus ARGS...`` with no LWFM_* variables: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(), cwd=cwd
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _cli(config: lb.BusConfig, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``lwfm-bus`` reaching the test's server, with the test's home."""
    return await _run("--home", str(config.home), "--url", config.servers[0], *args, cwd=cwd)


def _pipeline(directory: Path, text: str, name: str = "p.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _workflow_of(stdout: str) -> str:
    first = stdout.splitlines()[0]
    m = re.match(r"run (\S+) of ", first)
    assert m is not None, first
    return m[1]


# --------------------------------------------------------------------------- item 6: failed steps


MISSING = """
    pipeline: 1
    name: missing
    steps:
      solve:
        run: [solvr, in.dat]
      noisy:
        run: [python3, -c, "import sys; sys.stderr.write(sys.argv[1]); sys.exit(3)",
              "one\\ntwo\\nthree\\nfour \\x1b[31mred\\n"]
"""


async def test_a_step_whose_command_does_not_exist_fails_in_one_line(
    bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    path = _pipeline(tmp_path, MISSING)
    code, out, err = await _cli(bus_config, "run", str(path))
    assert code == 1, err
    jobs = {r.name: r for r in await bus.jobs(workflow=_workflow_of(out))}
    solve, noisy = jobs["missing:solve"], jobs["missing:noisy"]
    assert await bus.logs(solve.job_id, "stderr") == b"command not found: solvr\n"  # not a traceback
    assert (solve.state, solve.exit_code) == (JobState.FAILED, 127)
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if "missing:solve" in line and "FAILED" in line)
    assert lines[at].endswith(f"FAILED (exit 127)   [solve: 0/1]   job {solve.job_id}")
    assert lines[at + 1] == f"{'':10}| command not found: solvr"
    at = next(i for i, line in enumerate(lines) if "missing:noisy" in line and "FAILED" in line)
    assert lines[at].endswith(f"job {noisy.job_id}")
    assert lines[at + 1 : at + 4] == [f"{'':10}| two", f"{'':10}| three", f"{'':10}| four \\x1b[31mred"]  # escaped
    assert "Traceback" not in out + err


async def test_a_plain_job_whose_command_does_not_exist_says_the_same(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    code, out, _ = await _cli(bus_config, "submit", "--wait", "--", "solvr", "in.dat")
    assert code == 1
    job_id = out.split()[0]
    assert await bus.logs(job_id, "stderr") == b"command not found: solvr\n"
    assert (await bus.status(job_id)).exit_code == 127


# --------------------------------------------------------------------------- item 7: unknown sites


ON_A_SITE = """
    pipeline: 1
    name: elsewhere
    steps:
      prepare:
        run: [python3, -c, "pass"]
      solve:
        after: prepare
        site: SITE
        run: [python3, -c, "pass"]
"""


async def test_a_step_on_an_unknown_site_is_refused_at_its_line(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    home = bus_config.home
    home.mkdir(parents=True, exist_ok=True)
    write_sites(home / "sites.toml", {"hpc": {"adapter": "local", "served_by_up": False}})
    typo = _pipeline(tmp_path, ON_A_SITE.replace("SITE", "hcp"), "typo.yaml")
    nope = _pipeline(tmp_path, ON_A_SITE.replace("SITE", "nope"), "nope.yaml")
    fine = _pipeline(tmp_path, ON_A_SITE.replace("SITE", "hpc"), "fine.yaml")
    where = f"configured: hpc, local; see {home / 'sites.toml'}"

    code, out, err = await _run("--home", str(home), "validate", str(typo), str(nope), str(fine))
    assert code == 2
    assert err.splitlines() == [
        f"{typo}:8:11: steps.solve.site: unknown site 'hcp' (did you mean 'hpc'? {where})",
        f"{nope}:8:11: steps.solve.site: unknown site 'nope' ({where})",
    ]
    assert out.splitlines() == [f"{fine}: ok: elsewhere, 2 steps: prepare [1], solve [1]"]

    code, out, err = await _cli(bus_config, "run", str(nope))
    assert code == 2
    assert err.splitlines() == [f"{nope}:8:11: steps.solve.site: unknown site 'nope' ({where})"]
    assert out == ""
    async with lb.connect(bus_config.model_copy(update={"agents": ()})) as bus:
        assert await bus.jobs() == []  # refused before anything was published
        with pytest.raises(PipelineError, match="unknown site 'nope'"):  # and from Python, by the runner itself
            await run_pipeline(bus, load_pipeline(nope), lambda _: None)
        assert await bus.jobs() == []


# --------------------------------------------------------------------------- item 8: small defects


async def test_logs_of_a_job_that_has_not_started_says_so(bus_config: lb.BusConfig) -> None:
    bus_config.home.mkdir(parents=True, exist_ok=True)
    write_sites(bus_config.home / "sites.toml", {"later": {"adapter": "local", "served_by_up": False}})
    code, out, _ = await _cli(bus_config, "submit", "--job-site", "later", "--", "true")  # no agent serves 'later'
    assert code == 0
    job_id = out.strip()
    code, out, err = await _cli(bus_config, "logs", job_id)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"lwfm-bus logs: job {job_id} has not started yet (PENDING: no agent); no log yet -- "
        f"'lwfm-bus status {job_id}' says where it is"
    ]


async def test_a_mistyped_command_suggests_the_right_one(tmp_path: Path) -> None:
    code, out, err = await _run("--home", str(tmp_path), "sumbit", "--", "true")
    assert (code, out) == (2, "")
    assert err == "lwfm-bus: error: invalid choice: 'sumbit' (did you mean 'submit'?)\n"
    code, _, err = await _run("--home", str(tmp_path), "workflow", "shwo", "x")
    assert (code, err) == (2, "lwfm-bus workflow: error: invalid choice: 'shwo' (did you mean 'show'?)\n")


@pytest.mark.parametrize("command", ["up", "demo"])
async def test_up_and_demo_say_what_they_do(command: str, tmp_path: Path) -> None:
    code, out, _ = await _run("--home", str(tmp_path), command, "--help")
    assert code == 0
    usage, _, rest = out.partition("\n\n")
    description = rest.split("\n\n")[0]
    assert usage.startswith(f"usage: lwfm-bus {command}")
    assert not description.startswith("options:") and len(description.split()) >= 20, out


async def test_get_records_the_copy_at_its_absolute_path(bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path) -> None:
    original = tmp_path / "site" / "result.dat"
    original.parent.mkdir()
    original.write_text("42")
    here = tmp_path / "work"
    here.mkdir()
    code, out, err = await _cli(bus_config, "get", str(original), "copy.dat", "--json", cwd=here)
    assert code == 0, err
    record = json.loads(out)
    assert record["location"] == str(here.resolve() / "copy.dat")
    assert (await bus.data(record["data_id"])).location == str(here.resolve() / "copy.dat")
    assert (here / "copy.dat").read_text() == "42"


ONE_OUTPUT = """
    pipeline: 1
    name: single
    steps:
      make:
        run: [python3, -c, "import sys; open(sys.argv[1], 'w').write('x')", "{outputs.out}"]
        outputs: {out: made.txt}
"""


async def test_run_says_one_job_and_one_run(bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path) -> None:
    path = _pipeline(tmp_path, ONE_OUTPUT)
    code, out, err = await _cli(bus_config, "run", str(path))
    assert code == 0, err
    assert re.fullmatch(r"run \S+ of single: 1 job \(all now\)", out.splitlines()[0])
    code, out, err = await _cli(bus_config, "run", str(path))  # its output is recorded: not run again
    assert code == 0, err
    summary = [line for line in out.splitlines() if line.startswith("single (")]
    assert summary == [f"single ({_workflow_of(out)}): complete, 1 run up to date (not run again)"]
    assert not re.search(r"\b1 (jobs|runs)\b", out)


# --------------------------------------------------------------------------- item 10: overviews


@asynccontextmanager
async def _with_sites(config: lb.BusConfig, sites: dict[str, dict[str, object]]) -> AsyncIterator[lb.Bus]:
    """A bus running the ``local`` agent of a home whose sites file is written first."""
    config.home.mkdir(parents=True, exist_ok=True)
    write_sites(config.home / "sites.toml", sites)
    async with hold_connection(config) as bus:
        yield bus


async def test_workflow_ls_and_a_bare_status_give_the_overview(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    async with _with_sites(bus_config, {"later": {"adapter": "local", "served_by_up": False}}) as bus:
        first = await bus.define_workflow("first")
        done = await bus.submit(lb.JobDefn.of(["true"], name="done"), workflow=first)
        await wait_state(bus, done.job_id, JobState.COMPLETE)
        second = await bus.define_workflow("second")
        waits = await bus.submit(lb.JobDefn.of(["cat", str(gate)], name="waits"), workflow=second)
        queued = await bus.submit(lb.JobDefn.of(["true"], name="queued"), workflow=second, site="later")
        await wait_state(bus, waits.job_id, JobState.RUNNING)
        try:
            code, out, err = await _cli(bus_config, "status")
            assert code == 0, err
            assert out.splitlines() == [
                "later: 1 pending",
                f"  {queued.job_id}  {'PENDING':<9} {'':>4}  {'later':<10} queued  (no agent)",
                "local: 1 running",
                f"  {waits.job_id}  {'RUNNING':<9} {'':>4}  {'local':<10} waits",
            ]
            code, out, _ = await _cli(bus_config, "status", "--json")
            assert code == 0
            assert {json.loads(line)["job_id"] for line in out.splitlines()} == {waits.job_id, queued.job_id}

            code, out, err = await _cli(bus_config, "workflow", "ls")
            assert code == 0, err
            header, *lines = out.splitlines()
            assert header.split() == ["WORKFLOW", "STARTED", "ENDED", "JOBS", "STATES", "SITES", "NAME"]
            assert [line.split()[0] for line in lines] == [second.workflow_id, first.workflow_id]  # newest first
            assert re.search(r" - +2  PENDING 1, RUNNING 1 +later,local +second$", lines[0]), lines[0]
            assert re.search(r":\d\d +1  COMPLETE 1 +local +first$", lines[1]), lines[1]

            code, out, _ = await _cli(bus_config, "workflow", "ls", "--json", "--limit", "1")
            (doc,) = (json.loads(line) for line in out.splitlines())
            assert {k: doc[k] for k in ("workflow_id", "name", "ended_at", "jobs", "states", "sites")} == {
                "workflow_id": second.workflow_id,
                "name": "second",
                "ended_at": None,
                "jobs": 2,
                "states": {"PENDING": 1, "RUNNING": 1},
                "sites": ["later", "local"],
            }
            code, out, _ = await _cli(bus_config, "workflow", "ls", "--json")
            docs = [json.loads(line) for line in out.splitlines()]
            assert [d["workflow_id"] for d in docs] == [second.workflow_id, first.workflow_id]
            assert docs[1]["ended_at"] == (await bus.status(done.job_id)).updated_at.isoformat()
        finally:
            await asyncio.to_thread(gate.write_text, "go")
        await wait_state(bus, waits.job_id, JobState.COMPLETE)
        await bus.cancel(queued.job_id, wait_s=None)
        await wait_state(bus, queued.job_id, JobState.CANCELLED)
    code, out, _ = await _cli(bus_config, "status")
    assert (code, out) == (0, "nothing is pending or running\n")


# --------------------------------------------------------------------------- item 11: demo


async def test_demo_ends_with_commands_that_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out, err = await _run("--home", str(home), "demo")
    assert code == 0, err
    z_id = next(line.split()[1] for line in out.splitlines() if line.startswith("Z "))
    workflow = err.split("; workflow ")[1].split()[0]
    tips = err.split("next, try:\n")[1].splitlines()
    assert 2 <= len(tips) <= 3
    commands = [shlex.split(line, comments=True) for line in tips]
    assert all(c[:3] == ["lwfm-bus", "--home", str(home)] for c in commands), tips
    shown_out: list[str] = []
    for command in commands:
        code, out, err = await _run(*command[1:])
        assert code == 0, (command, err)
        shown_out.append(out)
    assert f"workflow {workflow}  demo A->B->C" in shown_out[0]
    assert sorted(line.split()[-1] for line in shown_out[0].splitlines() if "COMPLETE" in line) == sorted("ABCXYZ")
    assert shown_out[1] == "joined 2 parents\n"
    assert f"job {z_id} COMPLETE" in shown_out[2]


# --------------------------------------------------------------------------- item 8: a federated home


async def test_a_federated_home_reached_without_its_file_says_which_option(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    code, _, err = await _run(
        "federation", "init", "-o", str(fed), "--hub", "hub", "--hub-url", "nats-leaf://127.0.0.1:1",
        "--hub-listen", "127.0.0.1:0", "--leaf", "alpha",
    )  # fmt: skip
    assert code == 0, err
    home = tmp_path / "hub-home"
    config = lb.BusConfig(
        home=home,
        site="hub",
        autostart="process",
        federation_file=fed / "federation.toml",
        federation_secret_file=fed / "secrets" / "hub.secret",
    )
    async with lb.connect(config):  # the hub's server, advertised in its home
        code, out, err = await _run("--home", str(home), "--site", "hub", "status", "--workflow", "w")
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert "--federation" in line and "LWFM_BUS_FEDERATION" in line, line
    assert shown(line) == line
