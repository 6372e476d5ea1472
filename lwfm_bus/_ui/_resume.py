"""Resuming a failed pipeline run from the dashboard: ``lwfm-bus run FILE --resume W``, detached.

The dashboard does not run the pipeline itself: it starts the same command a user would
type (``python -m lwfm_bus --home H [--url U] run FILE [--set ...] --resume W``), with an
argument list (never a shell), in a session of its own (it outlives the dashboard, and a
Ctrl-C on the dashboard does not reach it), its output in a log file under the bus home.
The page sees the run go on through its live stream, like any other.

A run is resumed only when nothing of it is still active, and when its last attempt
failed, was cancelled, or was interrupted (a trigger waits with nothing running, or no
job started at all); one resume per workflow runs at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from .._client import Bus
from .._identity import CREDENTIAL_ENV
from .._states import JobState

__all__ = ["ResumeRefused", "Resumer"]

_SPENT = frozenset({JobState.FAILED, JobState.CANCELLED})
_TERMINAL = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED})


class ResumeRefused(Exception):
    """Why a workflow cannot be resumed now; ``status`` is the HTTP status that says so."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass
class Resumer:
    """Starts resumes for one dashboard, and remembers them (one at a time per workflow; reaped when asked)."""

    bus: Bus
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    async def resume(self, workflow_id: str) -> dict[str, Any]:
        """Start the resume of run ``workflow_id``; what was started (no credential in it).

        Raises :class:`ResumeRefused` with why it cannot be resumed now.
        """
        for started in self.running.values():
            started.poll()  # reaps those that ended
        earlier = self.running.get(workflow_id)
        if earlier is not None and earlier.poll() is None:
            raise ResumeRefused(f"a resume of this run is already going on (process {earlier.pid})")
        record = await self.bus.workflow(workflow_id)
        if record is None:
            raise ResumeRefused("no workflow of that id is known to this bus", 404)
        pipeline = record.properties.get("pipeline")
        if not isinstance(pipeline, str) or not pipeline:
            raise ResumeRefused("this workflow is not a pipeline run: there is nothing to resume")
        if not await anyio.Path(pipeline).is_file():
            raise ResumeRefused(f"its pipeline file is gone: {pipeline}")
        await self._check_resumable(workflow_id)
        stored = record.properties.get("overrides")
        sets = [str(text) for text in stored] if isinstance(stored, list) else []
        argv, env, shown_argv = self._command(Path(pipeline), sets, workflow_id)
        logs = self.bus.config.home / "ui"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"resume-{workflow_id}-{time.strftime('%Y%m%dT%H%M%S')}.log"

        def start() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as out:
                return subprocess.Popen(
                    argv,
                    cwd=Path(pipeline).parent,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own session: it outlives the dashboard, Ctrl-C stays here
                )

        process = await anyio.to_thread.run_sync(start)
        self.running[workflow_id] = process
        return {"workflow_id": workflow_id, "pid": process.pid, "argv": shown_argv, "log": str(log_path)}

    async def _check_resumable(self, workflow_id: str) -> None:
        jobs = await self.bus.jobs(workflow=workflow_id, limit=None)
        active = [j for j in jobs if j.state not in _TERMINAL]
        if active:
            raise ResumeRefused(f"this run is still going on ({len(active)} job(s) active): wait for it to end first")
        latest: dict[str, Any] = {}
        for job in jobs:  # an attempt of a step bears its step's name: the latest one tells
            key = job.name or job.job_id
            if key not in latest or job.created_at >= latest[key].created_at:
                latest[key] = job
        if any(j.state in _SPENT for j in latest.values()) or not jobs:
            return
        triggers = await (await self.bus.index()).triggers(workflow_id=workflow_id, limit=1000)
        if any(t.state == "active" for t in triggers):
            return  # a trigger waits and nothing runs: the run was interrupted
        raise ResumeRefused("its last run completed: there is nothing to resume")

    def _command(
        self, pipeline: Path, sets: list[str], workflow_id: str
    ) -> tuple[list[str], dict[str, str], list[str]]:
        """The command and its environment; and the command as shown (a URL without its user and password)."""
        config = self.bus.config
        job_env = self.bus.job_env()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LWFM_BUS_")}
        env.update({k: job_env[k] for k in CREDENTIAL_ENV if k in job_env})  # never on its command line
        url = self.bus.connected_url or ",".join(config.servers)
        head = [sys.executable, "-m", "lwfm_bus", "--home", str(config.home), "--site", config.site]
        if config.federation_file is not None:
            head += ["--federation", str(config.federation_file)]
        tail = ["run", str(pipeline), *[w for text in sets for w in ("--set", text)], "--resume", workflow_id]
        if not url:
            return [*head, *tail], env, [*head, *tail]
        if "@" in urlsplit(url).netloc:  # credentials in the URL: in the environment, not on a command line
            env["LWFM_BUS_URL"] = url
            return [*head, *tail], env, [*head, "--url", _without_userinfo(url), *tail]
        return [*head, "--url", url, *tail], env, [*head, "--url", url, *tail]
