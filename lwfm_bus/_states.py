"""Canonical job states and their partial order.

Sites report what they see, not every step: a Slurm job can be first observed as
COMPLETED, a local job may never be PENDING.  Judging a state by its *rank* rather
than by equality is what lets a trigger waiting for RUNNING fire on a COMPLETE that
arrives first, and lets a late RUNNING be ignored after a COMPLETE.

Ranks: READY 0 < PENDING 1 < RUNNING = INFO 2 < FINISHING 3 < {COMPLETE, FAILED,
CANCELLED} 4.  The three terminal states are incomparable with each other.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobState"]


class JobState(StrEnum):
    """The lwfm canonical job states."""

    READY = "READY"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    INFO = "INFO"
    FINISHING = "FINISHING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def rank(self) -> int:
        """Position in the partial order; equal ranks are concurrent, not ordered."""
        return _RANK[self]

    @property
    def is_terminal(self) -> bool:
        """No further state change will follow."""
        return self.rank == _TERMINAL_RANK

    @property
    def is_success(self) -> bool:
        return self is JobState.COMPLETE

    def at_or_after(self, other: JobState) -> bool:
        """True if a job in this state has reached (or passed) ``other``.

        A terminal ``other`` is only reached by itself: a FAILED job has not
        reached COMPLETE, though both are past RUNNING.
        """
        if other.is_terminal:
            return self is other
        return self.rank >= other.rank

    def supersedes(self, current: JobState | None) -> bool:
        """Should a newly observed state replace ``current`` as the job's status?

        Later-or-equal ranks win (INFO after RUNNING is news); nothing replaces a
        terminal state, so an out-of-order RUNNING after COMPLETE is ignored.
        """
        if current is None:
            return True
        if current.is_terminal:
            return False
        return self.rank >= current.rank


_TERMINAL_RANK = 4
_RANK = {
    JobState.READY: 0,
    JobState.PENDING: 1,
    JobState.RUNNING: 2,
    JobState.INFO: 2,
    JobState.FINISHING: 3,
    JobState.COMPLETE: _TERMINAL_RANK,
    JobState.FAILED: _TERMINAL_RANK,
    JobState.CANCELLED: _TERMINAL_RANK,
}
