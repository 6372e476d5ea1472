"""The suite runner: every benchmark in its own process, each with a hard timeout.

    .venv/bin/python -m bench                      # the whole suite (<= 10 min on 2 cores)
    .venv/bin/python -m bench --quick              # small sizes, < 60 s; judges nothing (CI)
    .venv/bin/python -m bench --json out.json      # also write every figure and its details
    .venv/bin/python -m bench --only dag,firings   # a subset
    .venv/bin/python -m bench --profile prof/      # each timed window under py-spy (else cProfile)

Why processes: a benchmark that hangs is stopped (SIGINT, so its servers shut down
through its own ``async with`` blocks; SIGKILL of its process group after a grace
period) and reported as timed out, and the suite goes on.  The suite also keeps a
total budget: a benchmark is given at most what is left of it, so the whole run is
bounded even when every one of them is slow.

Exit status: 1 only if a benchmark crashed (a bug to fix); a missed target, a timeout
or a skipped benchmark exits 0, so a slow CI machine never fails the build on figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import Figure
from bench._profile import summarize

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Item:
    name: str
    module: str
    timeout_s: float
    quick_timeout_s: float
    what: str


ITEMS = (
    Item("up", "bench.up", 60, 20, "`lwfm-bus up` start to ready"),
    Item("startup", "bench.startup", 90, 25, "start-up of `lwfm-bus emit` and `step-exec` (every job runs them)"),
    Item("latency", "bench.latency", 120, 25, "trigger latency, idle and under 1 k events/s"),
    Item("agent", "bench.agent", 90, 20, "submit -> job started through an agent process vs raw spawning"),
    Item("ingest", "bench.ingest", 180, 25, "engine ingest with 100 k triggers vs a raw push consumer"),
    Item("matching", "bench.matching", 90, 15, "matching cost per event at 1 k / 100 k / 1 M triggers"),
    Item("firings", "bench.firings", 90, 20, "firings/s (claim + stored submission) vs raw KV creates"),
    Item("dag", "bench.dag", 360, 30, "10 k-job fan-out / fan-in DAG, two agents, vs raw subprocess spawning"),
    Item("cluster", "bench.cluster", 300, 30, "3-node cluster (R3) vs one server: firings/s, DAG jobs/s, publish->ack"),
    Item("memory", "bench.memory", 120, 20, "engine RSS per registered trigger"),
    Item("find", "bench.find", 240, 20, "find with two predicates over 1 M records"),
    Item("remote", "bench.remote", 120, 30, "remote hop latency (sshd, Slurm), polled and with callbacks, vs local"),
    Item("ui", "bench.ui", 120, 25, "dashboard: a 10 k-job workflow page opening, and a burst of events, in chromium"),
    Item("envbuild", "bench.envbuild", 240, 20, "a step's Python environment built by uv, cold and warm, vs pip"),
)
SUITE_BUDGET_S = 600.0
QUICK_BUDGET_S = 90.0  # the run itself takes < 60 s; the rest is a margin for a slow machine
_GRACE_S = 10.0


def machine() -> dict[str, Any]:
    """What the figures came from: enough to tell two runs' machines apart."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    server = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    version = ""
    if server:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            version = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        commit = rev.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    nats_py = ""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        nats_py = importlib.metadata.version("nats-py")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "nats_server": version,
        "nats_py": nats_py,
        "commit": commit,
    }


def run_item(item: Item, quick: bool, budget_s: float, scratch: Path, profile_dir: Path | None) -> dict[str, Any]:
    """Run one benchmark in a child process; never raises for what the benchmark does."""
    # Under a profiler everything runs slower; its figures are not the point, its profile is.
    slack = 3.0 if profile_dir is not None else 1.0
    timeout = min((item.quick_timeout_s if quick else item.timeout_s) * slack, budget_s)
    result: dict[str, Any] = {"name": item.name, "what": item.what, "timeout_s": timeout, "figures": [], "details": {}}
    if timeout < 5:
        result.update(status="skipped", error="the suite's time budget is spent")
        return result
    tmp = Path(tempfile.mkdtemp(prefix=f"{item.name}-", dir=scratch))
    out, log = tmp / "result.json", scratch / f"{item.name}.log"
    cmd = [sys.executable, "-m", "bench._item", item.module, "--tmp", str(tmp / "work"), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    (tmp / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}  # never a user's real bus
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    if profile_dir is not None:
        env["BENCH_TIME_SCALE"] = str(slack)  # the benchmarks' own waits stretch likewise
        env["BENCH_PROFILE_WINDOW"] = str(profile_dir.resolve() / item.name)  # cProfile of each timed window
    t0 = time.perf_counter()
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        timed_out = False
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # asyncio.run cancels its task: servers are stopped
            try:
                rc = proc.wait(_GRACE_S)
            except subprocess.TimeoutExpired:
                rc = -9
        finally:
            # Whatever it left behind in its own process group (a server, a publisher) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    produced: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if timed_out:
        result.update(status="timeout", error=f"stopped after {timeout:.0f} s")
    elif "timed_out" in produced:
        result.update(status="timeout", error=f"a wait inside it ran out of time: {produced['timed_out']}")
    elif rc != 0 or "figures" not in produced:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        result.update(status="error", error=f"no result (exit code {rc}; log {log.name}):\n" + "\n".join(tail))
    else:
        result.update(status="ok", figures=produced["figures"], details=produced["details"])
    if profile_dir is not None:
        found = sorted(
            p for p in profile_dir.glob(f"{item.name}.*") if p.suffix == ".prof" or p.name.endswith(".pyspy.txt")
        )
        result["profiles"] = [str(p) for p in found]
        summary = "\n\n".join(f"==== {p.name}\n{summarize(p)}" for p in found)
        profile_dir.joinpath(f"{item.name}.summary.txt").write_text(summary or "no profile was written\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("ms", "s", "ns", "µs"):
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
        return f"{value:,.{digits}f} {unit}"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table: readable in a terminal, and pasted as is into the README."""
    lines = [
        "| figure | value | target | baseline (same run) | ratio | status |",
        "|---|---:|---|---|---:|---|",
    ]
    notes: list[str] = []
    for res in results:
        figs: list[Figure] = res["figures"]
        if res["status"] in ("timeout", "error", "skipped"):
            why = str(res.get("error", "")).splitlines()[0]
            lines.append(f"| {res['what']} | — | | | | {res['status']}: {why} |")
            continue
        for f in figs:
            base = ""
            if f["baseline"] is not None:
                base = f"{_cell(f['baseline'], f['baseline_unit'])} {f['baseline_label']}".strip()
            elif f["baseline_label"]:
                base = f["baseline_label"]
            ratio = ""
            if f["ratio"] is not None:
                ratio = f"{f['ratio']:.2f}x" if f["ratio"] >= 0.1 else f"{f['ratio']:.2g}x"
            if ratio and f["ratio_label"]:
                ratio += f" {f['ratio_label']}"
            status = f["status"] + (f": {f['note']}" if f["status"] == "n/a" and f["note"] else "")
            lines.append(
                f"| {f['name']} | {_cell(f['value'], f['unit'])} | {f['target']} | {base} | {ratio} | {status} |"
            )
            if f["note"] and f["status"] != "n/a":
                notes.append(f"- {f['name']}: {f['note']}")
    return "\n".join(lines + (["", *notes] if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, < 60 s; no figure is judged")
    parser.add_argument("--json", type=Path, help="write the results (figures, details, machine) here")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ", ".join(i.name for i in ITEMS))
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each benchmark's timed window into DIR (py-spy if found: PY_SPY or PATH; else cProfile), "
        "with a summary per benchmark; figures from such a run are slowed by the profiler, time limits tripled",
    )
    args = parser.parse_args(argv)
    chosen: tuple[Item, ...] = ITEMS
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        unknown = wanted - {i.name for i in ITEMS}
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        chosen = tuple(i for i in ITEMS if i.name in wanted)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    budget = (QUICK_BUDGET_S if args.quick else SUITE_BUDGET_S) * (3 if args.profile else 1)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="lwfm-bench-") as scratch:
        for item in chosen:
            left = budget - (time.perf_counter() - t0)
            print(f"[bench] {item.name}: {item.what} ...", file=sys.stderr, flush=True)
            res = run_item(item, args.quick, left, Path(scratch), args.profile)
            print(f"[bench] {item.name}: {res['status']} in {res.get('wall_s', 0)} s", file=sys.stderr, flush=True)
            if res["status"] == "error":
                print(res["error"], file=sys.stderr)
            results.append(res)
    wall = time.perf_counter() - t0
    info = machine()
    mode = "quick (small sizes; nothing judged)" if args.quick else "full"
    print(
        f"\nlwfm-bus performance suite, {mode}: {started:%Y-%m-%d %H:%M} UTC, {info['cpu']} x{info['cores']}, "
        f"Python {info['python']}, {info['nats_server']}, nats-py {info['nats_py']}, commit {info['commit']}; "
        f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; wall {wall:.0f} s\n"
    )
    print(table(results))
    missed = [f["name"] for r in results for f in r["figures"] if f["status"] == "MISSED"]
    if missed:
        print(f"\nmissed: {'; '.join(missed)}")
    if args.json:
        doc = {
            "suite": "lwfm-bus bench",
            "quick": args.quick,
            "date": started.isoformat(timespec="seconds"),
            "wall_s": round(wall, 1),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "machine": info,
            "items": results,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    crashed = [r["name"] for r in results if r["status"] == "error"]
    if crashed:
        print(f"\ncrashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0
