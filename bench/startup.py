"""Start-up of the commands every job runs: ``lwfm-bus emit`` and ``lwfm-bus step-exec`` (target <= 0.12 s).

Each case is a fresh process of this interpreter's environment, timed from spawn to
exit; the cases take turns within each round, so a noisy neighbour hits them alike,
and the medians are reported.  Measured:

- ``lwfm-bus emit --help`` and ``lwfm-bus step-exec --help`` (the real console script):
  parsing a command line, with nothing of the command's work;
- the imports each command has made when it starts its real work: the CLI entry, the
  command's module, and what builds and publishes an event (``emit``) or connects the
  client and runs the step (``step-exec``);
- baselines in the same run: ``python -c pass``, ``import argparse``, nats-py with
  pydantic (what publishing an event cannot do without), and the eager import the CLI
  used to make (``lwfm_bus`` with every public name, and every command module).

    .venv/bin/python -m bench.startup [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lwfm_bus as lb
from bench._common import Figure, figure

ITEM = "startup"
TARGET_S = 0.12

_EMIT_IMPORTS = "lwfm_bus._cli._main, lwfm_bus._cli._emit, lwfm_bus._jobside, lwfm_bus._bus._connect"
_STEP_IMPORTS = "lwfm_bus._cli._main, lwfm_bus._cli._step_exec, lwfm_bus._client, lwfm_bus._pipeline._stepexec"
_EAGER = (
    "import importlib, lwfm_bus as lb; [getattr(lb, n) for n in lb.__all__]; "
    "from lwfm_bus._cli._main import COMMANDS; "
    "[importlib.import_module('lwfm_bus._cli.' + m) for m in COMMANDS.values()]"
)


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("lwfm-bus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lwfm_bus"]


def cases() -> dict[str, list[str]]:
    py = [sys.executable, "-c"]
    return {
        "python": [*py, "pass"],
        "argparse": [*py, "import argparse"],
        "emit_help": [*_cli(), "emit", "--help"],
        "step_exec_help": [*_cli(), "step-exec", "--help"],
        "emit_imports": [*py, f"import {_EMIT_IMPORTS}"],
        "step_exec_imports": [*py, f"import {_STEP_IMPORTS}"],
        "nats_pydantic": [*py, "import nats, pydantic; from pydantic import BaseModel"],
        "eager": [*py, _EAGER],
    }


def _clean_env() -> dict[str, str]:
    """Never a user's real bus: no LWFM_BUS_* setting reaches the child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}


def once(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``cmd`` to its exit (which must be 0)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd)} exited with code {proc.returncode}: {tail}")
    return elapsed


def run(runs: int) -> dict[str, Any]:
    """One discarded warm-up round (disk cache, bytecode), then ``runs`` rounds of every case in turn."""
    env = _clean_env()
    todo = cases()
    samples: dict[str, list[float]] = {name: [] for name in todo}
    for i in range(runs + 1):
        names = list(todo)
        shift = i % len(names)  # a different case goes first each round
        for name in names[shift:] + names[:shift]:
            t = once(todo[name], env)
            if i:
                samples[name].append(t)
    return {
        "runs": runs,
        "median_s": {name: statistics.median(xs) for name, xs in samples.items()},
        "samples_s": {name: [round(x, 4) for x in xs] for name, xs in samples.items()},
        "emit_imports": _EMIT_IMPORTS,
        "step_exec_imports": _STEP_IMPORTS,
        "version": lb.__version__,
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    r = run(3 if quick else 15)
    m: dict[str, float] = r["median_s"]
    eager, floor = m["eager"], m["nats_pydantic"]
    base = f"(`python -c pass` {m['python']:.3f} s, `import argparse` {m['argparse']:.3f} s)"

    def ms(name: str) -> float:
        return round(m[name] * 1000, 1)

    def fig(name: str, key: str, *, target: bool, note: str) -> Figure:
        return figure(
            ITEM, f"{name} (median of {r['runs']})", ms(key), "ms",
            target=("value", "<=", TARGET_S * 1000) if target else None,
            baseline=ms("eager"), baseline_label="eager import, as the CLI did (every public name and command)",
            ratio=round(m[key] / eager, 2), ratio_label="of the eager import", quick=quick, note=note,
        )  # fmt: skip

    figs = [
        fig("`lwfm-bus emit --help` start to exit", "emit_help", target=True, note=base),
        fig("`lwfm-bus step-exec --help` start to exit", "step_exec_help", target=True, note=base),
        fig(
            "`lwfm-bus emit`: what it has imported when it starts publishing",
            "emit_imports",
            target=True,
            note=f"nats-py + pydantic alone (the floor for publishing an event): {floor * 1000:.0f} ms",
        ),
        fig(
            "`lwfm-bus step-exec`: what it has imported when it starts the step",
            "step_exec_imports",
            target=False,
            note="the whole client (find, notate, workspaces): the step runner needs it",
        ),
    ]
    return figs, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.runs), indent=2))


if __name__ == "__main__":
    main()
