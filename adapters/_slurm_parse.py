"""Slurm's words, read strictly: sbatch's answer, squeue's lines, scontrol's records.

Every function here either returns exactly what it was built to read or raises
:class:`SlurmOutputError` naming the command and quoting the offending text -- a Slurm
upgrade that changes a format must become a clear error on the job, never a wrong
state and never a crashed watcher.  The native state word always travels with the
canonical state (``native_state`` in the event).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lwfm_bus import JobState, Resources, SiteError

__all__ = [
    "SQUEUE_FORMAT",
    "STATES",
    "SlurmOutputError",
    "SqueueRow",
    "canonical",
    "parse_sbatch",
    "parse_scontrol_exit",
    "parse_squeue",
    "sbatch_resource_args",
]


class SlurmOutputError(SiteError):
    """A Slurm command said something we do not understand."""


# Every job state of Slurm 22.05+ (``squeue --states``), with its canonical state and a
# reason for the ones that are failures in lwfm terms.
STATES: dict[str, tuple[JobState, str | None]] = {
    "PENDING": (JobState.PENDING, None),
    "CONFIGURING": (JobState.PENDING, "nodes are being configured or booted"),
    "REQUEUED": (JobState.PENDING, "requeued"),
    "REQUEUE_FED": (JobState.PENDING, "requeued by the federation"),
    "REQUEUE_HOLD": (JobState.PENDING, "requeued and held"),
    "RESV_DEL_HOLD": (JobState.PENDING, "held: its reservation was deleted"),
    "SUSPENDED": (JobState.RUNNING, "suspended"),
    "STOPPED": (JobState.RUNNING, "stopped (SIGSTOP)"),
    "RUNNING": (JobState.RUNNING, None),
    "SIGNALING": (JobState.RUNNING, "being signalled"),
    "RESIZING": (JobState.RUNNING, "resizing"),
    "COMPLETING": (JobState.FINISHING, None),
    "STAGE_OUT": (JobState.FINISHING, "staging out"),
    "COMPLETED": (JobState.COMPLETE, None),
    "FAILED": (JobState.FAILED, "non-zero exit code"),
    "TIMEOUT": (JobState.FAILED, "time limit reached"),
    "NODE_FAIL": (JobState.FAILED, "a node failed"),
    "PREEMPTED": (JobState.FAILED, "preempted"),
    "OUT_OF_MEMORY": (JobState.FAILED, "out of memory"),
    "BOOT_FAIL": (JobState.FAILED, "a node failed to boot"),
    "DEADLINE": (JobState.FAILED, "its deadline passed"),
    "SPECIAL_EXIT": (JobState.FAILED, "special exit (requeue-hold)"),
    "CANCELLED": (JobState.CANCELLED, "cancelled"),
    "REVOKED": (JobState.CANCELLED, "revoked: a sibling cluster runs it"),
}

# %i: job id (array elements as 123_4), %T: state, %r: reason.  '|' never occurs in the first two.
SQUEUE_FORMAT = "%i|%T|%r"
_NATIVE = re.compile(r"\d{1,12}(?:_\d{1,9})?")
_SQUEUE_LINE = re.compile(r"(?P<id>\d{1,12}(?:_\d{1,9})?)\|(?P<state>[A-Z_]{1,32})\|(?P<reason>[^\n]{0,512})")
_SBATCH = re.compile(r"(?P<id>\d{1,12})(?:;[A-Za-z0-9_.\-]{1,128})?\n?")
_EXIT = re.compile(r"(?:^| )ExitCode=(?P<rc>\d{1,3}):(?P<sig>\d{1,3})(?: |$)")


def canonical(native: str) -> tuple[JobState, str | None] | None:
    """The canonical state of a Slurm state word (``CANCELLED by 0`` included), or None if unknown."""
    word = native.split(" ", 1)[0].rstrip("+")
    return STATES.get(word)


def is_native_id(text: str) -> bool:
    return _NATIVE.fullmatch(text) is not None


def parse_sbatch(text: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    m = _SBATCH.fullmatch(text)
    if m is None:
        raise SlurmOutputError(f"sbatch: unexpected output {text[:300]!r} (expected a job id)")
    return m["id"]


@dataclass(frozen=True)
class SqueueRow:
    native_id: str
    state: str
    reason: str


def parse_squeue(text: str) -> dict[str, SqueueRow]:
    """Rows of ``squeue --noheader --format=%i|%T|%r``; any other line is an error."""
    rows: dict[str, SqueueRow] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _SQUEUE_LINE.fullmatch(line)
        if m is None:
            raise SlurmOutputError(f"squeue: unexpected line {line[:300]!r} (expected JOBID|STATE|REASON)")
        rows[m["id"]] = SqueueRow(m["id"], m["state"], m["reason"].strip())
    return rows


def parse_scontrol_exit(text: str, native_id: str) -> tuple[int, int]:
    """``(exit code, signal)`` of one job from ``scontrol -o show job``."""
    for line in text.splitlines():
        if _record_is(line, native_id):
            m = _EXIT.search(line)
            if m is None:
                raise SlurmOutputError(f"scontrol show job {native_id}: no ExitCode=N:S in {line[:300]!r}")
            return int(m["rc"]), int(m["sig"])
    raise SlurmOutputError(f"scontrol show job {native_id}: no record for the job in {text[:300]!r}")


def _record_is(line: str, native_id: str) -> bool:
    job, _, task = native_id.partition("_")
    if task:
        return f" ArrayJobId={job} " in line and f" ArrayTaskId={task} " in line
    return line.startswith(f"JobId={job} ")


def sbatch_resource_args(res: Resources) -> list[str]:
    """Resource hints as sbatch options (one ``--name=value`` word each: nothing to re-parse)."""
    args: list[str] = []
    if res.nodes is not None:
        args.append(f"--nodes={res.nodes}")
    if res.tasks is not None:
        args.append(f"--ntasks={res.tasks}")
    if res.cpus_per_task is not None:
        args.append(f"--cpus-per-task={res.cpus_per_task}")
    if res.memory_mb is not None:
        args.append(f"--mem={res.memory_mb}M")
    if res.time_limit_s is not None:
        args.append(f"--time={max(1, math.ceil(res.time_limit_s / 60))}")  # Slurm counts whole minutes
    if res.partition is not None:
        args.append(f"--partition={res.partition}")
    if res.account is not None:
        args.append(f"--account={res.account}")
    if res.gpus is not None:
        args.append(f"--gpus={res.gpus}")
    return args
