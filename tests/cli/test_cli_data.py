"""``lwfm-bus notate | find | put | get | data | workspace | workflow`` as real processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus._cli._print import parse_where
from tests._helpers import cli_env

CLI = [sys.executable, "-m", "lwfm_bus"]


async def _cli(config: lb.BusConfig, *args: str, ok: bool = True) -> tuple[str, str]:
    env = cli_env()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(config.home), "--url", config.servers[0], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode == 0) is ok, (proc.returncode, err.decode())
    return out.decode(), err.decode()


async def test_notate_then_find_from_the_shell(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    f = tmp_path / "mesh.vtk"
    f.write_text("mesh")
    out, _ = await _cli(bus_config, "notate", str(f), "-m", "kind=mesh", "-m", "step=3", "-m", 'tags=["a","b"]')
    data_id = out.strip()
    await _cli(bus_config, "notate", "/elsewhere/x", "--on-site", "hpc1", "-m", "kind=mesh", "-m", 'step="3"')

    out, _ = await _cli(bus_config, "find", "--where", "kind=mesh", "--where", "step>=2", "--json")
    page = json.loads(out)
    assert [r["data_id"] for r in page["records"]] == [data_id]  # the string "3" is not a number
    record = page["records"][0]
    assert record["metadata"] == {"kind": "mesh", "step": 3, "tags": ["a", "b"]}
    assert record["size"] == 4 and record["checksum"].startswith("sha256:")

    out, _ = await _cli(bus_config, "find", "-w", "kind~me*", "-w", "tags?", "-w", "step<4")
    assert data_id in out and "/elsewhere/x" not in out and "mesh.vtk" in out
    out, _ = await _cli(bus_config, "find", "--has", "kind", "--on-site", "hpc1", "--json")
    assert [r["location"] for r in json.loads(out)["records"]] == ["/elsewhere/x"]

    out, _ = await _cli(bus_config, "data", "show", data_id, "--json")
    assert json.loads(out)["data"]["location"] == str(f)


async def test_put_get_and_the_workspace_commands(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("payload")
    dest = tmp_path / "site" / "in.txt"
    out, _ = await _cli(bus_config, "put", str(src), str(dest), "-m", "role=input", "--json")
    assert json.loads(out)["direction"] == "put" and dest.read_text() == "payload"
    back = tmp_path / "back.txt"
    out, _ = await _cli(bus_config, "get", str(dest), str(back), "--json")
    assert json.loads(out)["metadata"] == {"role": "input"} and back.read_text() == "payload"

    root = tmp_path / "ws"
    await _cli(bus_config, "workspace", "define", "w1", "--root", f"local={root}")
    await _cli(bus_config, "workspace", "add", "w1", "data/in.txt")
    out, _ = await _cli(bus_config, "workspace", "resolve", "workspace:w1/data/in.txt")
    assert out.strip() == str(root / "data" / "in.txt")
    out, _ = await _cli(bus_config, "workspace", "ls", "w1", "--json")
    assert json.loads(out)["files"] == {"data/in.txt": [{"site": "local", "path": str(root / "data" / "in.txt")}]}
    _, err = await _cli(bus_config, "workspace", "add", "w1", "../escape", ok=False)
    assert "'..'" in err
    await _cli(bus_config, "workspace", "delete", "w1")
    out, _ = await _cli(bus_config, "workspace", "ls")
    assert out.strip() == ""


async def test_workflow_show_lists_jobs_data_and_triggers(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    wf = await bus.define_workflow("shown")
    a = await bus.submit(lb.JobDefn.of(["true"]), workflow=wf)
    await a.wait(timeout=30)
    await bus.notate("/made/by/a", {"k": 1}, job=lb.JobContext(job_id=a.job_id, workflow_id=wf.workflow_id))
    await bus.set_job_trigger(lb.JobDefn.of(["true"]), "never-runs", workflow=wf)
    out, _ = await _cli(bus_config, "workflow", "show", wf.workflow_id, "--json")
    doc = json.loads(out)
    assert doc["name"] == "shown"
    assert [(j["job_id"], j["state"]) for j in doc["jobs"]] == [(a.job_id, "COMPLETE")]
    assert [d["location"] for d in doc["data"]] == ["/made/by/a"]
    assert [t["state"] for t in doc["triggers"]] == ["active"]
    _, err = await _cli(bus_config, "workflow", "show", "no-such-workflow", ok=False)
    assert "no workflow" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["find", "--where", "step>=abc"], "needs a number"),
        (["find", "--where", "noop"], "expected key=value"),
        (["find", "--where", "a=1", "--where", "a~x*"], "two conditions"),
        (["find", "--where", "bad key=1"], "where"),
        (["find", "--limit", "0"], "limit"),
        (["notate", "/x", "-m", "novalue"], "expected key=value"),
        (["notate", "/x", "-m", 'k={"nested":1}'], "metadata.k"),
        (["workspace", "define", "w", "--root", "local"], "SITE=/absolute/path"),
    ],
)
async def test_bad_arguments_are_one_clear_line(bus_config: lb.BusConfig, args: list[str], words: str) -> None:
    _, err = await _cli(bus_config, *args, ok=False)
    assert words in err and "Traceback" not in err


def test_where_conditions_parse_to_a_signature() -> None:
    assert parse_where(["a=1", "b~x*", "c>=2", "c<5", "d?", "e=true", 'f="1"', "g=text"], ["h"]) == {
        "h": {"op": "present"},
        "a": {"op": "eq", "value": 1},
        "b": {"op": "glob", "pattern": "x*"},
        "c": {"op": "range", "ge": 2, "lt": 5},
        "d": {"op": "present"},
        "e": {"op": "eq", "value": True},
        "f": {"op": "eq", "value": "1"},
        "g": {"op": "eq", "value": "text"},
    }


async def test_emit_data_takes_dash_m_like_notate_and_put(
    bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    """Issue 22, item 6: ``emit data`` took only ``--meta`` where notate and put also take ``-m``."""
    produced = tmp_path / "out.dat"
    produced.write_text("42")
    job_id = lb.new_id()
    env = cli_env()
    env.update(LWFM_JOB_ID=job_id, LWFM_SITE="local", LWFM_BUS_URL=bus_config.servers[0])
    env["LWFM_BUS_HOME"] = str(bus_config.home)  # as a job's environment has them
    proc = await asyncio.create_subprocess_exec(
        *CLI, "emit", "data", str(produced), "-m", "kind=short", "--meta", "n=3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    async with bus.subscribe("lwfm.local.data.>", from_start=True) as events:
        event = await events.next(timeout=30)
    assert isinstance(event, lb.DataEvent)
    assert (event.data.job_id, event.data.metadata) == (job_id, {"kind": "short", "n": 3})
