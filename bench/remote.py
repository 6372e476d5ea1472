"""Remote hop latency: a job submitted to a remote site -> its COMPLETE on the bus (issue 22, item 7).

A chain across sites waits at every hop for the remote site to say that the previous
job ended.  Without callbacks that is the site's watcher's next query; before issue
22 the first one came a whole ``poll_interval_s`` (5 s by default) after the
submission, so each hop took 5 s.  Now the watcher asks 0.5 s after a submission and
then at growing gaps.  With ``callback = true`` the job's wrapper reports its own
start and end (a Python process on the site each time, which connects to the bus).

One sample: ``t0`` just before ``await bus.submit(JobDefn.of(["true"]), site=...)``;
``t1`` when the job's COMPLETE event reaches this process (a core subscription).
Sites, all served by agents in this process, all at their default settings:

- ``local``: the baseline, the same hop with no remote host and no polling;
- ``ssh``: the test sshd on loopback (tests/sites/_sshd.py: Debian's sshd, a separate
  unprivileged login user), polled;
- ``ssh-callback``: the same host with ``callback = true``; its ``python`` is a small
  wrapper that lets the login user run this interpreter's lwfm-bus;
- ``slurm`` (full run only: starting a cluster takes seconds): a local single-node
  Slurm (tests/sites/_slurm.py), polled.

Samples are taken one at a time, interleaved across the sites, after one warm-up
each (the first opens the SSH connection).  Needs root, sshd (and Slurm): without
them each figure says why it was not measured, and the suite goes on.

    .venv/bin/python -m bench.remote [--samples 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

import lwfm_bus as lb
from bench._common import Figure, figure, log, not_available, scaled
from lwfm_bus.testing import bus_config_for, start_test_server
from tests._helpers import write_sites
from tests.sites._slurm import SlurmCluster, running_slurm, why_no_slurm
from tests.sites._sshd import SshServer, python_for_user, running_sshd, why_no_sshd

ITEM = "remote"
ROOT = Path(__file__).resolve().parent.parent
_WARMUP = 1
_NAMES = {
    "ssh": "remote hop (submit -> COMPLETE on the bus), ssh site, polled, p50",
    "ssh-callback": "remote hop, ssh site, callback = true, p50",
    "slurm": "remote hop, local Slurm site, polled, p50",
}
_BASE = "local site's hop, same run"


class _Ends:
    """The instant each job's terminal event reaches this process."""

    def __init__(self) -> None:
        self.ended: dict[str, asyncio.Future[tuple[float, str]]] = {}

    async def on_msg(self, msg: Msg) -> None:
        now = time.perf_counter()
        parts = msg.subject.split(".")  # lwfm.<site>.job.<workflow>.<job>.<STATE>
        if len(parts) != 6:
            return
        try:
            state = lb.JobState(parts[5])
        except ValueError:
            return
        fut = self.ended.get(parts[4])
        if state.is_terminal and fut is not None and not fut.done():
            fut.set_result((now, state.value))


def _sites_file(path: Path, server: SshServer, python: Path, cluster: SlurmCluster | None) -> Path:
    ssh = {"adapter": "ssh", **server.site_options()}
    sites: dict[str, dict[str, object]] = {"ssh": ssh, "ssh-callback": {**ssh, "callback": True, "python": str(python)}}
    if cluster is not None:
        sites["slurm"] = {"adapter": "slurm", "slurm_conf": str(cluster.conf)}
    return write_sites(path, sites)


async def run(
    server: SshServer, cluster: SlurmCluster | None, samples: int, tmp: Path, timeout: float
) -> dict[str, Any]:
    sites = ["local", "ssh", "ssh-callback"] + (["slurm"] if cluster is not None else [])
    python = python_for_user(server)
    sites_file = _sites_file(tmp / "sites.toml", server, python, cluster)
    hops: dict[str, list[float]] = {s: [] for s in sites}
    failures: dict[str, str] = {}
    async with start_test_server(tmp / "nats") as nats_server:
        config = bus_config_for(nats_server, tmp / "home", sites_file=sites_file, agents=tuple(sites))
        async with lb.connect(config, name="bench-remote") as bus:
            ends = _Ends()
            sub = await bus.nats.subscribe("lwfm.*.job.>", cb=ends.on_msg)
            try:
                for i in range(samples + _WARMUP):
                    for site in sites:
                        if site in failures:
                            continue
                        job_id = f"remote-{site}-{i}"
                        ended = ends.ended[job_id] = asyncio.get_running_loop().create_future()
                        t0 = time.perf_counter()
                        await bus.submit(lb.JobDefn.of(["true"]), site=site, job_id=job_id)
                        # The first sample also waits for the site to open (an SSH connection).
                        t1, state = await asyncio.wait_for(ended, timeout * (3 if i == 0 else 1))
                        if state != lb.JobState.COMPLETE.value:
                            err = (await bus.logs(job_id, "stderr")).decode(errors="replace").strip()
                            why = f"`true` ended {state} on site {site}: {err[-300:] or 'no stderr'}"
                            if site == "ssh-callback":  # the site cannot run lwfm-bus: measured without it
                                failures[site] = why
                                continue
                            raise RuntimeError(why)
                        if i >= _WARMUP:
                            hops[site].append((t1 - t0) * 1000)
                    log(f"sample {i}: " + ", ".join(f"{s} {h[-1]:.0f} ms" for s, h in hops.items() if h))
            finally:
                await sub.unsubscribe()
    return {
        "samples": samples,
        "hops_ms": {s: [round(v, 2) for v in h] for s, h in hops.items()},
        "p50_ms": {s: round(statistics.median(h), 2) for s, h in hops.items() if h},
        "max_ms": {s: round(max(h), 2) for s, h in hops.items() if h},
        "not_measured": failures,
        "callback_python": str(python),
    }


@contextlib.contextmanager
def _cluster(tmp: Path, wanted: bool) -> Iterator[SlurmCluster | None]:
    if not wanted:
        yield None
        return
    with running_slurm(tmp / "slurm") as cluster:
        yield cluster


def figures(quick: bool, tmp: Path) -> tuple[list[Figure], dict[str, Any]]:
    why = why_no_sshd()
    if why is not None:
        log(f"skipped: {why}")
        return [not_available(ITEM, name, f"not measured: {why}") for name in _NAMES.values()], {"skipped": why}
    no_slurm = "not in a quick run (starting a cluster takes seconds)" if quick else why_no_slurm()
    n = 2 if quick else 10
    with running_sshd(tmp / "sshd") as server, _cluster(tmp, no_slurm is None) as cluster:
        r = asyncio.run(run(server, cluster, n, tmp, timeout=scaled(30)))
    base = r["p50_ms"]["local"]
    figs: list[Figure] = []
    for site, name in _NAMES.items():
        value = r["p50_ms"].get(site)
        if value is None:
            why = r["not_measured"].get(site) or (no_slurm if site == "slurm" else None) or "no sample"
            figs.append(not_available(ITEM, name, f"not measured: {why}"))
            continue
        note = f"{r['samples']} samples, max {r['max_ms'][site]:.0f} ms"
        if site != "ssh-callback":
            note += "; before issue 22 item 7 the first poll came poll_interval_s (5 s) after the submission"
        figs.append(
            figure(
                ITEM, name, value, "ms", baseline=base, baseline_label=_BASE,
                ratio=round(value / base, 2) if base else None, ratio_label="of local", note=note, quick=quick,
            )
        )  # fmt: skip
    return figs, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--slurm", action="store_true", help="also a local Slurm site")
    args = parser.parse_args()
    why = why_no_sshd()
    if why is not None:
        sys.exit(f"not measured: {why}")
    with tempfile.TemporaryDirectory() as tmp_dir, contextlib.suppress(KeyboardInterrupt):
        tmp = Path(tmp_dir)
        with running_sshd(tmp / "sshd") as server, _cluster(tmp, args.slurm) as cluster:
            print(json.dumps(asyncio.run(run(server, cluster, args.samples, tmp, 30.0)), indent=2))


if __name__ == "__main__":
    main()
