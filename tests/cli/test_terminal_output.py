"""What the bus or a user wrote reaches the terminal escaped: one event, record or job is one line, always.

Real processes against a real server; the crafted texts are the ones of issue 16 (item 4): a
file name or an INFO text that would forge a whole output line, clear it (``ESC [2K``), colour
it, ring the bell, or reorder it (bidi overrides).  ``--json`` keeps every string exact.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import sys
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus._cli._print import shown, shown_json
from tests._helpers import cli_env

CLI = [sys.executable, "-m", "lwfm_bus"]

FORGED = "\n12:00:00.000     99 job FORGED-LINE COMPLETE on local\r\x1b[2K"
NASTY = "a\nb\rc\x1b[31md\x07e\x7ff\x85g\u2028h\u2029i\u202ej\u2066k\\l"  # every class, and a backslash
NASTY_SHOWN = r"a\nb\rc\x1b[31md\x07e\x7ff\x85g\u2028h\u2029i\u202ej\u2066k\\l"
INVISIBLE = {f"\\x{c:02x}" for c in range(0x20)}  # how C0 controls look once escaped


async def _cli(config: lb.BusConfig, *args: str, ok: bool = True) -> tuple[str, str]:
    env = cli_env()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--home", str(config.home), "--url", config.servers[0], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode == 0) is ok, (proc.returncode, err.decode())
    return out.decode(), err.decode()


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")


def _lines(out: str) -> list[str]:
    """The output's lines, after checking that only "\\n" ends them and nothing else is hidden in them."""
    lines = out.split("\n")
    assert lines[-1] == "", "the output ends with a newline"
    lines = lines[:-1]
    bad = sorted({f"U+{ord(ch):04X}" for line in lines for ch in line if _hidden(ch)})
    assert not bad, f"raw control or invisible characters reached the terminal: {bad}"
    assert out.splitlines() == lines  # no other line break either (\r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029)
    return lines


# --------------------------------------------------------------------------- shown() itself


def test_shown_escapes_every_control_and_invisible_character() -> None:
    c0 = [chr(c) for c in range(0x20)]
    c1 = [chr(c) for c in range(0x80, 0xA0)]
    others = ["\x7f", "\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
    for ch in [*c0, *c1, *others]:
        out = shown(f"<{ch}>")
        assert out != f"<{ch}>" and out.startswith("<\\") and out.endswith(">"), (ch, out)
        assert not any(_hidden(o) for o in out), (ch, out)
    assert shown("\n\r\t") == r"\n\r\t"
    assert shown("\x1b[2K\x00\x07\x7f\x9b") == r"\x1b[2K\x00\x07\x7f\x9b"
    assert shown("\u2028\u202e\u2069\U000e0001") == r"\u2028\u202e\u2069\U000e0001"
    assert shown(NASTY) == NASTY_SHOWN
    assert shown("C:\\tmp\\new") == r"C:\\tmp\\new"  # a backslash is doubled: "\n" above is unambiguous


def test_shown_keeps_printable_text_as_it_is() -> None:
    ascii_printable = "".join(chr(c) for c in range(0x20, 0x7F) if c != ord("\\"))
    for text in (ascii_printable, "é", "日本", "naïve Ærø 日本語 — ü\u00a0ok", "👍", ""):
        assert shown(text) == text
    assert shown(Path("/data/été.txt")) == "/data/été.txt"
    assert shown(None) == "None" and shown(42) == "42"


def test_shown_leaves_nothing_hidden_for_any_code_point_and_reads_back() -> None:
    everything = "".join(map(chr, range(0x110000)))  # lone surrogates and unassigned code points included
    out = shown(everything)
    assert not [ch for ch in set(out) if _hidden(ch)]
    assert codecs.decode(out.encode("ascii", "backslashreplace"), "unicode_escape") == everything
    # JSON cannot tell a lone high surrogate followed by a lone low one from a pair: keep them apart.
    text = everything.replace("\udbff\udc00", "\udbff \udc00")
    doc = shown_json(json.dumps({"k": text}, ensure_ascii=False))
    assert not [ch for ch in set(doc) if _hidden(ch)]
    assert json.loads(doc) == {"k": text}  # still JSON, and the same value
    assert shown_json('{"k":"é 日本 \\\\ \\n"}') == '{"k":"é 日本 \\\\ \\n"}'  # JSON's own escapes kept as they are


# --------------------------------------------------------------------------- the commands


async def test_find_and_data_show_print_one_line_per_record(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    crafted = tmp_path / f"mesh{FORGED}\x07\u202eevil.vtk"
    crafted.write_text("mesh")  # a file name can hold all of that
    note = "line1\nline2\r\x1b[31mred\x07\u2028\u202eend"
    out, _ = await _cli(bus_config, "notate", str(crafted), "-m", f"note={note}", "-m", "kind=mesh")
    crafted_id = out.strip()
    out, _ = await _cli(bus_config, "notate", str(tmp_path / "plain.vtk"), "--on-site", "hpc1", "-m", "kind=mesh")
    plain_id = out.strip()

    out, _ = await _cli(bus_config, "find", "--where", "kind=mesh")
    lines = _lines(out)
    assert len(lines) == 3, lines  # the header and one line per record
    (row,) = [line for line in lines if line.startswith(crafted_id)]
    assert [line for line in lines if "FORGED-LINE" in line] == [row]
    assert shown(str(crafted)) in row and r"\n12:00:00.000     99 job FORGED-LINE COMPLETE on local\r\x1b[2K" in row
    assert r'"note":"line1\nline2\r\u001b[31mred\u0007\u2028\u202eend"' in row  # the column is still JSON
    assert any(line.startswith(plain_id) for line in lines)

    out, _ = await _cli(bus_config, "find", "--where", "kind=mesh", "--json")
    records = {r["data_id"]: r for r in json.loads(out)["records"]}
    assert records[crafted_id]["location"] == str(crafted)  # --json: exact
    assert records[crafted_id]["metadata"] == {"note": note, "kind": "mesh"}

    out, _ = await _cli(bus_config, "data", "show", crafted_id)
    lines = _lines(out)
    assert [line.split()[0] for line in lines] == ["data", "location", "size", "checksum", "metadata"]
    assert lines[1] == f"location  local:{shown(str(crafted))}"
    assert json.loads(lines[4].removeprefix("metadata  ")) == {"note": note, "kind": "mesh"}
    out, _ = await _cli(bus_config, "data", "show", crafted_id, "--json")
    assert json.loads(out)["data"]["location"] == str(crafted)


async def test_events_show_a_forging_info_text_on_one_line(bus_config: lb.BusConfig) -> None:
    since = datetime.now(UTC).isoformat()
    job_id = lb.new_id()
    info = f"progress 50%{FORGED}\x00\u202e\u2028done"
    async with lb.connect(bus_config.model_copy(update={"agents": ()})) as bus:
        for state, text in ((lb.JobState.RUNNING, None), (lb.JobState.INFO, info)):
            status = lb.JobStatus(job_id=job_id, site="local", state=state, info=text)
            await bus.publish(lb.make_event(status, source="/tests/terminal"))

    out, _ = await _cli(bus_config, "events", f"lwfm.*.job.*.{job_id}.*", "--since", since, "--no-follow")
    lines = _lines(out)
    assert len(lines) == 2, lines  # RUNNING, then the INFO: one line each
    assert lines[0].endswith(f"job {job_id} RUNNING on local")
    assert lines[1].endswith(f"job {job_id} INFO on local {shown(info)}")
    assert r"\n12:00:00.000     99 job FORGED-LINE COMPLETE on local\r\x1b[2K\x00\u202e\u2028done" in lines[1]

    out, _ = await _cli(bus_config, "events", f"lwfm.*.job.*.{job_id}.*", "--since", since, "--no-follow", "--json")
    events = [lb.decode_event(line.encode()) for line in out.split("\n")[:-1]]  # --json: unchanged, exact
    assert [e.data.info for e in events if isinstance(e, lb.JobStatusEvent)] == [None, info]


async def test_status_workflow_show_and_trigger_ls_escape_names(bus: lb.Bus, bus_config: lb.BusConfig) -> None:
    wf = await bus.define_workflow(f"wf{FORGED}")
    name = f"job{FORGED}\x07\u202e"
    job = await bus.submit(lb.JobDefn.of(["true"], name=name), workflow=wf)
    assert (await job.wait(timeout=30)).state is lb.JobState.COMPLETE
    made = await bus.notate(
        f"/made/by{FORGED}", {"k": 1}, site="hpc1", job=lb.JobContext(job_id=job.job_id, workflow_id=wf.workflow_id)
    )
    trigger = lb.JobTrigger(
        name=f"trig{FORGED}",
        workflow_id=wf.workflow_id,
        upstream=lb.Upstream(job_id="never-runs"),
        downstream=lb.Downstream(job=lb.JobDefn.of(["true"])),
    )
    await bus.add_trigger(trigger)

    out, _ = await _cli(bus_config, "status", job.job_id)
    (row,) = _lines(out)
    assert row.startswith(f"{job.job_id}  COMPLETE") and row.endswith(f"local      {shown(name)}")
    out, _ = await _cli(bus_config, "status", "--workflow", wf.workflow_id)
    assert _lines(out) == [row]
    out, _ = await _cli(bus_config, "status", job.job_id, "--json")
    assert json.loads(out)["name"] == name

    out, _ = await _cli(bus_config, "workflow", "show", wf.workflow_id)
    lines = _lines(out)
    assert lines[0] == f"workflow {wf.workflow_id}  {shown(wf.name)}"
    assert lines[1:] == [
        "jobs:",
        f"  {job.job_id:<32}  COMPLETE  local      parents -  {shown(name)}",
        "data:",
        f"  {made.data_id:<32}  hpc1:{shown(f'/made/by{FORGED}')}  from {job.job_id}",
        "triggers:",
        f"  {trigger.trigger_id:<32}  job-status  active    fired 0",
    ]
    out, _ = await _cli(bus_config, "workflow", "show", wf.workflow_id, "--json")
    doc = json.loads(out)
    assert (doc["name"], doc["jobs"][0]["name"]) == (wf.name, name)

    out, _ = await _cli(bus_config, "trigger", "ls", "--workflow", wf.workflow_id)
    header, row = _lines(out)
    assert header.split() == ["TRIGGER", "KIND", "STATE", "FIRED", "LAST", "JOB", "NAME"]
    assert row.startswith(trigger.trigger_id) and row.endswith(f" {shown(trigger.name)}")
    out, _ = await _cli(bus_config, "trigger", "ls", "--workflow", wf.workflow_id, "--json")
    assert json.loads(out)["name"] == trigger.name


async def test_an_error_quoting_user_text_is_one_line(bus_config: lb.BusConfig, tmp_path: Path) -> None:
    query = tmp_path / "missing\nlwfm-bus: error: FORGED-LINE\x1b[2K.json"
    _, err = await _cli(bus_config, "find", "--query", str(query), ok=False)
    (line,) = _lines(err)
    assert line.startswith("lwfm-bus: error: ") and line.count("lwfm-bus: error:") == 2
    assert line.endswith(r"missing\nlwfm-bus: error: FORGED-LINE\x1b[2K.json: cannot read: No such file or directory")
