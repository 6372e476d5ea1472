"""What every job runs starts light: ``lwfm-bus emit`` and ``step-exec`` import only what they use.

Issue #21: the CLI used to import every command and the whole public API (about 0.34 s)
for each ``emit`` and ``step-exec`` inside a job.  These tests run the real commands in
fresh processes against a real server and look at ``sys.modules`` when they are done:
a module that has no business there (the bundle code, the pipeline loader, the
dashboard, metrics, SSH, cron parsing...) fails the test, whoever brings it back.  How
fast that is belongs to ``bench/startup.py``; nothing here measures time.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus._cli._main import COMMANDS, build_parser
from lwfm_bus._sites._registry import load_sites
from tests._helpers import cli_env, job_events

# Run ``main(argv)`` as the console script would, then write the names of every module
# imported by the end: what the whole command needed, not only its first imports.
_PROBE = """
import json, sys
from lwfm_bus._cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(code)
"""

# Never needed to publish one event, or to run one step and record its outputs.
_NEVER = (
    "lwfm_bus._bus._bundle",
    "lwfm_bus._pipeline._yaml",
    "lwfm_bus._pipeline._load",
    "lwfm_bus._pipeline._model",
    "lwfm_bus._pipeline._graph",
    "lwfm_bus._pipeline._run",
    "lwfm_bus._ui",
    "lwfm_bus._metrics",
    "lwfm_bus._engine",
    "lwfm_bus._sites._agent",
    "lwfm_bus._cli._print",
    "yaml",
    "asyncssh",
    "croniter",
    "prometheus_client",
    "starlette",
)
# Publishing an event needs neither the client nor what it composes (index, sites, repository).
_NEVER_FOR_EMIT = (
    *_NEVER,
    "lwfm_bus._pipeline",
    "lwfm_bus._client",
    "lwfm_bus._index",
    "lwfm_bus._repo",
    "lwfm_bus._sites",
    "aiosqlite",
)
# Parsing a command line (``--help``, a typo) needs none of the command's work.
_NEVER_FOR_HELP = (*_NEVER_FOR_EMIT, "pydantic", "nats", "asyncio", "lwfm_bus._config", "lwfm_bus._events")


def _present(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    """The forbidden modules (or submodules of them) among ``modules``."""
    return sorted({f for f in forbidden for m in modules if m == f or m.startswith(f + ".")})


async def _probe(tmp_path: Path, *argv: str, env: dict[str, str], cwd: Path | None = None) -> tuple[int, list[str]]:
    out = tmp_path / "modules.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, str(out), *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    assert out.exists(), stderr.decode()
    modules: list[str] = json.loads(out.read_text())
    return proc.returncode, modules


def _job_env(config: lb.BusConfig, job_id: str, workflow_id: str) -> dict[str, str]:
    """What a site gives a job: its identity and the bus's address (``emit`` reads them there)."""
    return cli_env(
        LWFM_JOB_ID=job_id,
        LWFM_SITE="local",
        LWFM_WORKFLOW_ID=workflow_id,
        LWFM_BUS_URL=config.servers[0],
        LWFM_BUS_HOME=str(config.home),
    )


async def test_emit_publishes_without_importing_the_client_or_anything_heavy(
    bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    wf = await bus.define_workflow("emitting")
    job_id = lb.new_id()
    env = _job_env(bus_config, job_id, wf.workflow_id)
    code, modules = await _probe(tmp_path, "emit", "info", "light start", env=env)
    assert code == 0
    assert [s.info for s in await job_events(bus, job_id)] == ["light start"]
    assert _present(modules, _NEVER_FOR_EMIT) == []
    assert "nats" in modules  # the probe sees what the command imported: it did publish
    assert "lwfm_bus._events" in modules


async def test_step_exec_runs_and_records_without_importing_the_pipeline_loader_or_anything_heavy(
    bus: lb.Bus, bus_config: lb.BusConfig, tmp_path: Path
) -> None:
    wf = await bus.define_workflow("stepping")
    work = tmp_path / "work"
    work.mkdir()
    spec = {"pipeline": "p", "step": "make", "unit": "u1", "run": wf.workflow_id, "outputs": {"result": "out.txt"}}
    env = _job_env(bus_config, lb.new_id(), wf.workflow_id)
    argv = ["--home", str(bus_config.home), "--url", bus_config.servers[0], "step-exec", "--spec", json.dumps(spec)]
    command = ["--", sys.executable, "-c", "open('out.txt', 'w').write('made')"]
    code, modules = await _probe(tmp_path, *argv, *command, env=env, cwd=work)
    assert code == 0
    assert (work / "out.txt").read_text() == "made"
    page = await bus.find({"lwfm_output": "result", "lwfm_step": "make"})
    assert [Path(r.location).name for r in page.records] == ["out.txt"]
    assert _present(modules, _NEVER) == []
    assert "lwfm_bus._pipeline._stepexec" in modules


@pytest.mark.parametrize("word", ["emit", "step-exec"])
async def test_a_commands_help_imports_nothing_of_its_work(word: str, tmp_path: Path) -> None:
    code, modules = await _probe(tmp_path, word, "--help", env=cli_env())
    assert code == 0
    assert _present(modules, _NEVER_FOR_HELP) == []
    assert f"lwfm_bus._cli.{COMMANDS[word]}" in modules
    others = {f"lwfm_bus._cli.{m}" for w, m in COMMANDS.items() if w != word}
    assert others.isdisjoint(modules)


async def test_importing_the_package_imports_none_of_its_modules(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import json, sys, lwfm_bus; print(json.dumps(sorted(sys.modules)))",
        stdout=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    modules = json.loads(stdout)
    assert [m for m in modules if m.startswith("lwfm_bus")] == ["lwfm_bus"]
    assert "pydantic" not in modules


def test_every_command_word_is_listed_in_order_and_registered_by_its_module() -> None:
    parser = build_parser()
    text = parser.format_help()
    positions = [text.index(f"\n    {word} ") for word in COMMANDS]
    assert positions == sorted(positions)
    for word in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([word, "--help"])
        assert exit_info.value.code == 0


def test_a_mistyped_command_is_judged_against_every_word_without_loading_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["step-exce"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'step-exce' (did you mean 'step-exec'?)" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["lwfm_bus", "lwfm_bus._pipeline"])
def test_lazy_names_match_what_type_checkers_read(package: str) -> None:
    """The ``TYPE_CHECKING`` imports (what mypy and IDEs see) and ``_EXPORTS`` (what runs) agree."""
    module = importlib.import_module(package)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen: dict[str, tuple[str, ...]] = {}
    for node in guarded.body:
        assert isinstance(node, ast.ImportFrom)
        seen["." * node.level + (node.module or "")] = tuple(a.name for a in node.names)
    assert seen == module._EXPORTS
    exported = sorted(n for n in module.__all__ if n != "__version__")
    assert sorted(n for names in seen.values() for n in names) == exported


def test_every_public_name_imports_and_is_listed() -> None:
    for name in lb.__all__:
        namespace: dict[str, object] = {}
        exec(f"from lwfm_bus import {name}", namespace)  # the statement users write
        assert namespace[name] is getattr(lb, name)
    assert set(lb.__all__) <= set(dir(lb))
    with pytest.raises(AttributeError, match="no attribute 'Bsu'"):
        _ = lb.Bsu  # type: ignore[attr-defined]


def test_the_sites_file_loads_only_the_adapters_it_names(tmp_path: Path) -> None:
    """Reading it imports no other plugin (``ssh`` would bring asyncssh), yet a typo still lists them all."""
    path = tmp_path / "sites.toml"
    path.write_text('[sites.here]\nadapter = "local"\n')
    script = "import json, sys, pathlib; from lwfm_bus._sites._registry import load_sites; "
    script += f"load_sites(pathlib.Path({str(path)!r})); print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, env=cli_env(), timeout=60)
    assert _present(json.loads(done.stdout), ("adapters", "asyncssh")) == []
    path.write_text('[sites.hpc]\nadapter = "slurmm"\n')
    with pytest.raises(lb.ConfigError, match=r"unknown adapter 'slurmm' \(available: local, slurm, ssh"):
        load_sites(path)
