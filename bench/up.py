"""``lwfm-bus up``, from start to ready (target <= 2 s).

Runs the real CLI (the ``lwfm-bus`` console script of this interpreter's environment)
as a subprocess with a fresh home each time, and stops the clock at its readiness
line on stderr, ``lwfm-bus: up at <url> ...``, which ``up`` prints only once the
embedded server reported itself ready, the streams exist, the trigger engine replica
has started its consumers and the local site is open.  No polling: the line is read
as it is written.  Then SIGTERM, and the exit code must be 143 (a clean stop).

Baselines in the same run: the bare nats-server start to its own "Server is ready",
and a Python interpreter importing what ``up`` runs (the CLI's entry, the client with its
engine and agents, the server launcher: :data:`_UP_IMPORTS`), the two fixed costs that
``up`` cannot go below.  (Since the CLI imports each command lazily, ``import
lwfm_bus._cli`` alone is no longer that cost.)

    .venv/bin/python -m bench.up [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lwfm_bus as lb
from bench._common import Figure, figure
from lwfm_bus.testing import start_test_server

_READY = b"lwfm-bus: up at "
ITEM = "up"


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("lwfm-bus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lwfm_bus"]


def _clean_env() -> dict[str, str]:
    """Never a user's real bus: no LWFM_BUS_* setting reaches the child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}


async def up_once(home: Path, timeout: float = 20.0) -> float:
    """Seconds from spawning ``lwfm-bus up`` to its readiness line; it is then stopped."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *_cli(), "--home", str(home), "up",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError(f"lwfm-bus up exited (code {await proc.wait()}) before ready: {seen[-5:]}")
                if line.startswith(_READY):
                    elapsed = time.perf_counter() - t0
                    break
                seen.append(line)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                await proc.stderr.read()  # drain, so its last words cannot block it
                rc = await proc.wait()
        except TimeoutError:
            proc.kill()
            rc = await proc.wait()
    if rc != 143:
        raise RuntimeError(f"lwfm-bus up did not stop cleanly on SIGTERM (exit code {rc})")
    return elapsed


async def server_once(root: Path) -> float:
    t0 = time.perf_counter()
    async with start_test_server(root):
        return time.perf_counter() - t0


_UP_IMPORTS = "import lwfm_bus._cli._main, lwfm_bus._cli._up, lwfm_bus._client, lwfm_bus._bus._server"


async def import_once() -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _UP_IMPORTS, env=_clean_env())
    async with asyncio.timeout(30):
        if await proc.wait() != 0:
            raise RuntimeError(f"{_UP_IMPORTS!r} failed")
    return time.perf_counter() - t0


async def run(runs: int, tmp: Path) -> dict[str, Any]:
    """One discarded warm-up of each (disk cache, bytecode), then ``runs`` measured ones."""
    up, server, imports = [], [], []
    for i in range(runs + 1):
        u = await up_once(tmp / f"home{i}")
        s = await server_once(tmp / f"server{i}")
        m = await import_once()
        if i:
            up.append(u)
            server.append(s)
            imports.append(m)
    return {
        "runs": runs,
        "up_s": [round(x, 3) for x in up],
        "server_s": [round(x, 3) for x in server],
        "import_s": [round(x, 3) for x in imports],
        "up_median_s": statistics.median(up),
        "server_median_s": statistics.median(server),
        "import_median_s": statistics.median(imports),
        "version": lb.__version__,
    }


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    r = asyncio.run(run(1 if quick else 5, tmp))
    up, server, imp = r["up_median_s"], r["server_median_s"], r["import_median_s"]
    figs = [
        figure(
            ITEM, f"`lwfm-bus up` start to ready (median of {r['runs']})", round(up, 3), "s",
            target=("value", "<=", 2.0), baseline=round(server + imp, 3),
            baseline_label=f"(bare nats-server ready {server:.2f} s + Python importing what up runs {imp:.2f} s)",
            ratio=round(up / (server + imp), 2), ratio_label="of the fixed costs", quick=quick,
            note=f"slowest run {max(r['up_s']):.2f} s",
        ),
    ]  # fmt: skip
    return figs, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args.runs, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
