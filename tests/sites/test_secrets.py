"""Secrets (issue 20, item 3): ``secret:NAME`` is resolved by the agent that runs the job, from its site's store.

Real nats-server, real agents and real job processes.  Each job proves it received the
real value by writing its sha256 (never the value) to a file; the bus's events, the
submission stream and the job directory are then searched for the value itself.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._bus._eventbus import STREAM, SUBMIT_STREAM
from lwfm_bus._secrets import SecretStore, credential_like, redact, references
from lwfm_bus._sites import _secretrun
from lwfm_bus._sites._registry import load_sites
from lwfm_bus.testing import hold_connection
from tests._helpers import raw_stream, wait_pid_exit, wait_state, write_sites

_WAIT_S = 60
# Writes the sha256 of argv[2] and of $SEEN to argv[1], and prints both values (to be redacted).
_SHOW = (
    "import hashlib, os, sys\n"
    "a, e = sys.argv[2], os.environ['SEEN']\n"
    "print('argv=' + a, flush=True); print('env=' + e, file=sys.stderr, flush=True)\n"
    "open(sys.argv[1], 'w').write(hashlib.sha256(a.encode()).hexdigest() + ' ' + "
    "hashlib.sha256(e.encode()).hexdigest() + ' ' + str(sorted(k for k in os.environ if k.startswith('LWFM_SECRET_'))))"
)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _files_holding(root: Path, marker: bytes, *, skip: Path | None = None) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        outside = skip is None or skip not in path.parents
        if path.is_file() and not path.is_symlink() and outside and marker in path.read_bytes():
            found.append(path)
    return found


async def test_a_secret_reaches_the_job_and_nothing_else(bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path) -> None:
    marker = secrets.token_hex(16)
    store = SecretStore(bus_config.home, "local")
    store.set("MARKER_TOKEN", marker)
    assert stat.S_IMODE((store.path / "MARKER_TOKEN").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    out = tmp_path / "seen"
    defn = lb.JobDefn.of(
        [sys.executable, "-c", _SHOW, str(out), "secret:MARKER_TOKEN"], env={"SEEN": "secret:MARKER_TOKEN"}
    )
    job = await bus.submit(defn)
    final = await bus.wait(job.job_id, timeout=_WAIT_S)
    assert final.state is JobState.COMPLETE, final.native_info

    argv_sha, env_sha, leaked = out.read_text().split(" ", 2)
    assert (argv_sha, env_sha) == (_sha(marker), _sha(marker))  # the job got the real value, both ways
    assert leaked == "[]"  # no LWFM_SECRET_* variable of the agent reaches it
    stdout, stderr = await bus.logs(job.job_id), await bus.logs(job.job_id, "stderr")
    assert stdout == b"argv=***\n" and stderr == b"env=***\n"

    raw = [*await raw_stream(bus, STREAM), *await raw_stream(bus, SUBMIT_STREAM)]
    assert any(b"secret:MARKER_TOKEN" in m for m in raw)  # the reference travels...
    assert not [m for m in raw if marker.encode() in m]  # ...and the value never does
    home = bus_config.home
    assert _files_holding(home, marker.encode(), skip=home / "secrets") == []
    assert _files_holding(home, marker.encode()) == [store.path / "MARKER_TOKEN"]
    assert _files_holding(tmp_path / "nats", marker.encode()) == []  # the server's own store files
    assert any(_files_holding(tmp_path / "nats", b"secret:MARKER_TOKEN"))  # which do hold the job


async def test_a_missing_secret_fails_the_job_naming_it(bus: lb.Bus) -> None:
    job = await bus.submit(lb.JobDefn.of(["true"], env={"DB_PASSWORD": "secret:NOT_STORED_ANYWHERE"}))
    final = await bus.wait(job.job_id, timeout=_WAIT_S)
    assert final.state is JobState.FAILED
    assert final.native_state == "secret-missing"
    assert final.native_info is not None and "'NOT_STORED_ANYWHERE' is not set at site 'local'" in final.native_info


async def test_a_secret_from_the_agents_environment(
    bus: lb.Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = secrets.token_hex(16)
    monkeypatch.setenv("LWFM_SECRET_FROM_ENV", value)  # the agent runs in this process
    out = tmp_path / "seen"
    defn = lb.JobDefn.of([sys.executable, "-c", _SHOW, str(out), "secret:FROM_ENV"], env={"SEEN": "secret:FROM_ENV"})
    job = await bus.submit(defn)
    assert (await bus.wait(job.job_id, timeout=_WAIT_S)).state is JobState.COMPLETE
    assert out.read_text() == f"{_sha(value)} {_sha(value)} []"


async def test_a_job_that_names_no_secret_gets_none_of_the_agents(bus: lb.Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local job inherits its agent's environment: before, every LWFM_SECRET_* of the agent
    with it, so any job could read every secret given to the agent that way."""
    value = secrets.token_hex(16)
    monkeypatch.setenv("LWFM_SECRET_NOT_YOURS", value)  # the agent runs in this process
    job = await bus.submit(lb.JobDefn.of(["env"]))
    assert (await bus.wait(job.job_id, timeout=_WAIT_S)).state is JobState.COMPLETE
    seen = (await bus.logs(job.job_id)).decode()
    assert "PATH=" in seen  # the environment was printed
    assert "LWFM_SECRET_" not in seen and value not in seen


async def test_a_shell_job_reads_a_secret_from_its_env(bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path) -> None:
    value = secrets.token_hex(16)
    SecretStore(bus_config.home, "local").set("API_TOKEN", value)
    out = tmp_path / "seen"
    script = f'printf %s "$API_TOKEN" > {out}; echo "token: $API_TOKEN"'
    job = await bus.submit(lb.JobDefn.of(script, env={"API_TOKEN": "secret:API_TOKEN"}))
    assert (await bus.wait(job.job_id, timeout=_WAIT_S)).state is JobState.COMPLETE
    assert out.read_text() == value
    assert await bus.logs(job.job_id) == b"token: ***\n"


def test_output_split_across_writes_is_still_redacted(tmp_path: Path) -> None:
    """The runner holds back only a tail that may begin a value: a value written in two pieces is caught."""
    store = tmp_path / "store"
    store.mkdir()
    value = secrets.token_hex(16)
    (store / "S").write_text(value)
    pieces = (
        "import sys, time\n"
        "v = sys.argv[1]\n"
        "sys.stdout.write('a' + v[:7]); sys.stdout.flush(); time.sleep(0.2)\n"  # two separate reads by the runner
        "sys.stdout.write(v[7:] + 'b ' + v[:5] + '\\n'); sys.stdout.flush()\n"
    )
    spec = f'{{"store": "{store}", "site": "x", "env": {{}}}}'
    done = subprocess.run(
        [sys.executable, _secretrun.__file__, spec, "--", sys.executable, "-c", pieces, "secret:S"],
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("LWFM_SECRET_")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"a***b {value[:5]}\n".encode()  # a mere prefix is not the value: kept


def test_the_runner_passes_exit_codes_and_names_a_missing_secret(tmp_path: Path) -> None:
    spec = f'{{"store": "{tmp_path}", "site": "hpc", "env": {{"X": "ABSENT"}}}}'
    run = [sys.executable, _secretrun.__file__, spec, "--"]
    missing = subprocess.run([*run, "true"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "secret 'ABSENT' is not set at site 'hpc'" in missing.stderr
    (tmp_path / "ABSENT").write_text("v")
    assert subprocess.run([*run, "sh", "-c", "exit 7"], timeout=60).returncode == 7


def test_references_warnings_and_redaction() -> None:
    words = ["x", "secret:A", "--flag=secret:B", "secret:A"]
    defn = lb.JobDefn.of(words, env={"K": "secret:C", "P": "secret:bad-name"})
    assert references(defn) == ["A", "C"]  # whole words only; each once
    env = {"API_TOKEN": "x", "db_password": "x", "SecretKey": "x", "MONKEY": "x", "KEYBOARD": "x", "KEY": "secret:KEY"}
    assert credential_like(env) == ["API_TOKEN", "db_password", "SecretKey"]
    assert redact(b"a hunter22 b hunter2", ["hunter22", "hunter2", "ab"]) == b"a *** b ***"


async def test_a_job_with_secrets_is_cancelled_whole(bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path) -> None:
    """The runner stays out of the way of signals: cancel ends the job and the runner with it."""
    SecretStore(bus_config.home, "local").set("SLEEPY", secrets.token_hex(8))
    ready = tmp_path / "ready"
    script = f"echo $$ > {ready}.tmp && mv {ready}.tmp {ready}; exec sleep 120"
    job = await bus.submit(lb.JobDefn.of(script, env={"S": "secret:SLEEPY"}))
    await wait_state(bus, job.job_id, JobState.RUNNING, timeout=_WAIT_S)
    with anyio.fail_after(_WAIT_S):
        while not ready.exists():  # noqa: ASYNC110 - a file the job writes: no event to wait on
            await anyio.sleep(0.05)
    await bus.cancel(job.job_id)
    final = await bus.wait(job.job_id, timeout=_WAIT_S)
    assert final.state is JobState.CANCELLED
    await wait_pid_exit(int(ready.read_text()), timeout=_WAIT_S)  # the job's command is gone too


async def test_a_secret_from_a_variable_the_site_config_names(
    bus_config: lb.BusConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = secrets.token_hex(16)
    monkeypatch.setenv("VAULT_DB_PASSWORD", value)  # the agent runs in this process
    bus_config.sites_path().parent.mkdir(parents=True, exist_ok=True)
    write_sites(bus_config.sites_path(), {"local": {"secret_env": {"DB": "VAULT_DB_PASSWORD"}}})
    out = tmp_path / "seen"
    async with hold_connection(bus_config) as bus:
        defn = lb.JobDefn.of([sys.executable, "-c", _SHOW, str(out), "secret:DB"], env={"SEEN": "secret:DB"})
        job = await bus.submit(defn)
        assert (await bus.wait(job.job_id, timeout=_WAIT_S)).state is JobState.COMPLETE
        assert out.read_text() == f"{_sha(value)} {_sha(value)} []"
        # A job that names no secret does not inherit the variable either.
        other = await bus.submit(lb.JobDefn.of(["env"]))
        assert (await bus.wait(other.job_id, timeout=_WAIT_S)).state is JobState.COMPLETE
        seen = (await bus.logs(other.job_id)).decode()
        assert "PATH=" in seen and value not in seen


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"DB": "not a variable"}, "secret_env.DB: expected an environment variable's name"),
        ({"9x": "VAR"}, "secret_env.9x: not a secret name"),
        ("VAR", "secret_env: expected a table"),
    ],
)
def test_a_bad_secret_env_is_refused_naming_the_key(tmp_path: Path, table: object, message: str) -> None:
    path = write_sites(tmp_path / "sites.toml", {"local": {"secret_env": table}})
    with pytest.raises(lb.ConfigError, match=message):
        load_sites(path)


async def test_registering_a_trigger_warns_of_a_plain_credential_once(
    bus: lb.Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="lwfm_bus.client")
    plain = lb.JobDefn.of(["true"], env={"API_TOKEN": "plain-value", "HOME_DIR": "/x"})
    await bus.set_job_trigger(plain, lb.new_id())
    await bus.set_job_trigger(plain, lb.new_id())
    await bus.set_job_trigger(lb.JobDefn.of(["true"], env={"DB_PASSWORD": "secret:DB"}), lb.new_id())
    said = [r.getMessage() for r in caplog.records if "looks like a credential" in r.getMessage()]
    assert len(said) == 1 and "API_TOKEN" in said[0] and "secret:NAME" in said[0], said
    assert "plain-value" not in said[0]
