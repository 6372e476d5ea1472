"""Secrets through the command line (issue 20, item 3), with real ``lwfm-bus`` processes.

A marker value is stored with ``secret set``, used by a pipeline step's argv and env, and
printed by the step.  Then everything the bus and the CLI can show is searched for it:
the raw stream, the submission stream, an exported bundle, every file of the home but
the store itself, and the outputs of events, status, workflow show and logs.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import lwfm_bus as lb
from lwfm_bus._bus._eventbus import STREAM, SUBMIT_STREAM
from tests._helpers import raw_stream

CLI = [sys.executable, "-m", "lwfm_bus"]
_T = 120

PIPELINE = """\
pipeline: 1
name: secretive
steps:
  show:
    run: [python3, -c, "{script}", "secret:MARKER_TOKEN"]
    env: {{MARKER_TOKEN: "secret:MARKER_TOKEN"}}
  again:
    after: show
    run: [python3, -c, "import os; print('again ' + os.environ['T'])"]
    env: {{T: "secret:MARKER_TOKEN"}}
"""
_SCRIPT = (
    "import hashlib, os, sys; a = sys.argv[1]; e = os.environ['MARKER_TOKEN']; "
    "print('argv ' + a); print('env ' + e, file=sys.stderr); "
    "open('seen', 'w').write(hashlib.sha256(a.encode()).hexdigest() + ' ' + hashlib.sha256(e.encode()).hexdigest())"
)


def _cli(home: Path, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--home", str(home), *args], input=stdin, capture_output=True, text=True, timeout=_T, cwd=cwd
    )


async def _raw(bus: lb.Bus, stream: str) -> bytes:
    return b"\n".join(await raw_stream(bus, stream))


async def test_a_secret_used_by_a_pipeline_appears_nowhere_but_in_the_job(tmp_path: Path) -> None:
    home, marker = tmp_path / "home", secrets.token_hex(16)
    stored = _cli(home, "secret", "set", "MARKER_TOKEN", stdin=marker + "\n")
    assert stored.returncode == 0, stored.stderr
    store_file = home / "secrets" / "local" / "MARKER_TOKEN"
    assert store_file.read_text() == marker  # echo's newline is not part of it
    assert stat.S_IMODE(store_file.stat().st_mode) == 0o600
    listed = _cli(home, "secret", "ls")
    assert listed.stdout == "MARKER_TOKEN\n"

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE.format(script=_SCRIPT))
    ran = _cli(home, "run", str(pipeline), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    digest = hashlib.sha256(marker.encode()).hexdigest()
    assert (tmp_path / "seen").read_text() == f"{digest} {digest}"  # the job had the real value, argv and env
    found = re.search(r"\((\w+)\): complete", ran.stdout)
    assert found is not None, ran.stdout
    workflow = found.group(1)
    listing = _cli(home, "status", "--workflow", workflow, "--json").stdout
    jobs = {json.loads(line)["name"]: json.loads(line)["job_id"] for line in listing.splitlines()}
    job_id = jobs["secretive:show"]

    bundle = tmp_path / "out.bundle"
    exported = _cli(home, "export", "-o", str(bundle))
    assert exported.returncode == 0, exported.stderr
    outputs = {
        "run": ran.stdout + ran.stderr,
        "events": _cli(home, "events", "--all", "--no-follow").stdout,
        "events --json": _cli(home, "events", "--all", "--no-follow", "--json").stdout,
        "status --json": _cli(home, "status", "--json").stdout,
        "status job --json": _cli(home, "status", job_id, "--json").stdout,
        "workflow show --json": _cli(home, "workflow", "show", workflow, "--json").stdout,
        "secret ls": listed.stdout + listed.stderr + stored.stdout + stored.stderr,
    }
    logs = _cli(home, "logs", job_id)
    errs = _cli(home, "logs", job_id, "--stderr")
    assert (logs.stdout, errs.stdout) == ("argv ***\n", "env ***\n")  # printed by the job, redacted
    assert _cli(home, "logs", jobs["secretive:again"]).stdout == "again ***\n"
    for name, text in outputs.items():
        assert marker not in text, name
    # The downstream step's trigger carries its job, reference and all: the search means something.
    assert "secret:MARKER_TOKEN" in outputs["events --json"]

    bundle_bytes = bundle.read_bytes()
    assert b"secret:MARKER_TOKEN" in bundle_bytes and marker.encode() not in bundle_bytes
    store_dir = home / "secrets"
    everywhere = [
        p for p in home.rglob("*") if p.is_file() and store_dir not in p.parents and marker.encode() in p.read_bytes()
    ]
    assert everywhere == []  # the JetStream store, the index, logs and job directories included

    async with lb.connect(lb.BusConfig(home=home, autostart="off")) as bus:
        raw = await _raw(bus, STREAM) + await _raw(bus, SUBMIT_STREAM)
    assert b"secret:MARKER_TOKEN" in raw and marker.encode() not in raw

    removed = _cli(home, "secret", "rm", "MARKER_TOKEN")
    assert removed.returncode == 0 and not store_file.exists()
    assert _cli(home, "secret", "rm", "MARKER_TOKEN").returncode == 2
    again = _cli(home, "run", str(pipeline), cwd=tmp_path)
    assert again.returncode == 1
    assert "secret 'MARKER_TOKEN' is not set at site 'local'" in again.stdout + again.stderr
    assert _cli(home, "down").returncode == 0


def test_secret_names_are_checked_and_values_never_come_from_argv(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = _cli(home, "secret", "set", "no-dashes", stdin="v")
    assert bad.returncode == 2 and "is not a secret name" in bad.stderr
    extra = _cli(home, "secret", "set", "NAME", "value-on-argv", stdin="v")
    assert extra.returncode == 2  # no place for a value on the command line
    empty = _cli(home, "secret", "set", "NAME", stdin="")
    assert empty.returncode == 2 and not (home / "secrets" / "local" / "NAME").exists()
    other = _cli(home, "secret", "set", "NAME", "--site", "hpc1", stdin="v1")
    assert other.returncode == 0 and _cli(home, "secret", "ls", "--site", "hpc1").stdout == "NAME\n"
    assert _cli(home, "secret", "ls").stdout == ""


def test_validate_and_run_warn_of_a_plain_credential(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "pipeline: 1\nname: w\nsteps:\n  a:\n    run: [python3, -c, pass]\n"
        "    env: {API_TOKEN: hunter2hunter2, db_password: pw-value, MONKEY: banana, DEPLOY_KEY: 'secret:DEPLOY_KEY'}\n"
    )
    checked = _cli(tmp_path / "home", "validate", str(pipeline))
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, checked.stderr
    assert "steps.a.env.API_TOKEN looks like a credential" in warnings[0] and "secret:API_TOKEN" in warnings[0]
    assert "steps.a.env.db_password" in warnings[1]
    assert "hunter2hunter2" not in checked.stderr and "pw-value" not in checked.stderr
    assert _cli(tmp_path / "home", "secret", "set", "DEPLOY_KEY", stdin="deploy-key-value").returncode == 0
    ran = _cli(tmp_path / "home", "run", str(pipeline), cwd=tmp_path)  # at registration too
    assert ran.returncode == 0, ran.stderr
    assert "steps.a.env.API_TOKEN looks like a credential" in ran.stderr and "hunter2hunter2" not in ran.stderr
    assert _cli(tmp_path / "home", "down").returncode == 0
