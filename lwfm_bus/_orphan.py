"""Run by a local job's wrapper when the process that launched the job is gone.

The job's end must still reach the bus: this reads the job's directory and publishes
its terminal state.  The event id is deterministic, so if a surviving watcher (or a
later adopter) reports the same end, the stream keeps one copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from ._client import connect
from ._config import load_config
from ._jobs import JobContext
from ._sites._local import conclude
from ._sites._report import Reporter


async def _main(jobdir: Path) -> int:
    ctx = JobContext.model_validate_json((jobdir / "context.json").read_text())
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = json.loads((jobdir / "pid").read_text())["pid"]
        ctx = ctx.model_copy(update={"native_id": str(pid)})
    async with connect(load_config(), name="lwfm-bus orphan") as bus:
        await conclude(jobdir, ctx, Reporter(bus, source="orphan", deadline_s=60.0), None)
    with contextlib.suppress(OSError):
        (jobdir.parent.parent / "active" / ctx.job_id).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(Path(os.environ["LWFM_JOB_DIR"]))))
