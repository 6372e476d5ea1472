"""What engine replicas agree on, kept in the server: firing claims and join progress.

Two JetStream key-value buckets; every write is a create-if-absent or a
compare-and-set on the revision, never a lock in one process, so any number of
engine replicas (and a restarted one) agree:

* ``lwfm_firings`` -- one record per firing key.  Created once (the claim: exactly
  one replica wins), then moved from ``claimed`` to ``done`` or ``failed``.
* ``lwfm_joins`` -- one record per join: which upstreams are satisfied or ruled
  out, and when the first one was (the ``within`` window opens there).

Keys are hashes of the firing key or trigger id: KV keys allow fewer characters than
subject tokens, and a hash has a bounded length.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from .._bus._replicas import open_bucket
from .._ids import derived_id
from .._subjects import Token

__all__ = ["FIRINGS_BUCKET", "JOINS_BUCKET", "EngineStore", "FiringRecord", "FiringState", "JoinProgress"]

log = logging.getLogger("lwfm_bus.engine")

FIRINGS_BUCKET = "lwfm_firings"
JOINS_BUCKET = "lwfm_joins"


class FiringState(StrEnum):
    CLAIMED = "claimed"
    """Won by one replica; the dispatch may or may not have happened yet."""
    DONE = "done"
    """The job was submitted (or the expiry recorded) and the outcome event published."""
    FAILED = "failed"
    """Dispatch failed for good; a trigger.failed event says why."""


class FiringRecord(BaseModel):
    """One firing (or expiry) of a trigger.  Everything a replica needs to finish it."""

    model_config = ConfigDict(extra="forbid")

    firing_key: str
    trigger_id: Token
    outcome: Literal["fire", "expire"]
    state: FiringState = FiringState.CLAIMED
    job_id: Token | None = Field(default=None, description="The job started (downstream or fallback).")
    workflow_id: Token | None = None
    parent_ids: tuple[Token, ...] = ()
    cause_event_ids: tuple[str, ...] = ()
    reason: str | None = None
    claimed_by: str = ""
    claimed_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


class JoinProgress(BaseModel):
    """How far a join has come; only ever grows (sets are merged, never replaced)."""

    model_config = ConfigDict(extra="forbid")

    trigger_id: Token
    satisfied: list[Token] = Field(default_factory=list)
    ruled_out: list[Token] = Field(default_factory=list)
    parents_workflow: Token | None = None
    first_at: AwareDatetime | None = None
    deadline: AwareDatetime | None = None
    cause_event_ids: list[str] = Field(default_factory=list)


class EngineStore:
    """The two buckets, opened (or created) once per engine."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self.firings: KeyValue | None = None
        self.joins: KeyValue | None = None

    async def open(self) -> None:
        self.firings = await self._bucket(FIRINGS_BUCKET, "lwfm-bus trigger firings (exactly-once claims)")
        self.joins = await self._bucket(JOINS_BUCKET, "lwfm-bus join progress")

    async def _bucket(self, name: str, description: str) -> KeyValue:
        config = KeyValueConfig(bucket=name, description=description, history=1, storage=StorageType.FILE)
        return await open_bucket(self._js, config, self._replicas)  # created by whichever replica comes first

    # ------------------------------------------------------------------ firings

    @staticmethod
    def firing_kv_key(firing_key: str) -> str:
        return "f." + derived_id(firing_key)

    async def claim(self, record: FiringRecord) -> tuple[bool, FiringRecord, int]:
        """Create the firing record if absent.  Returns (won, the stored record, its revision)."""
        kv = self._kv(self.firings)
        key = self.firing_kv_key(record.firing_key)
        try:
            revision = await kv.create(key, record.model_dump_json().encode())
            return True, record, revision
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        entry = await kv.get(key)
        assert entry.value is not None and entry.revision is not None
        return False, FiringRecord.model_validate_json(entry.value), entry.revision

    async def get_firing(self, firing_key: str) -> FiringRecord | None:
        try:
            entry = await self._kv(self.firings).get(self.firing_kv_key(firing_key))
        except nats.js.errors.KeyNotFoundError:
            return None
        return FiringRecord.model_validate_json(entry.value or b"{}")

    async def settle(self, record: FiringRecord, state: FiringState, revision: int, reason: str | None = None) -> None:
        """Move a claimed firing to its final state (a compare-and-set: the claim must be unchanged)."""
        done = record.model_copy(update={"state": state, "reason": reason or record.reason})
        key = self.firing_kv_key(record.firing_key)
        try:
            await self._kv(self.firings).update(key, done.model_dump_json().encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.info("firing %s was settled by another replica meanwhile", record.firing_key)

    async def settle_announced(self, firing_key: str, state: FiringState) -> None:
        """The outcome event is in the stream: make sure the record says so (a no-op when it does)."""
        kv = self._kv(self.firings)
        key = self.firing_kv_key(firing_key)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return
        if entry.value is None or entry.revision is None:
            return
        record = FiringRecord.model_validate_json(entry.value)
        if record.state is FiringState.CLAIMED:
            await self.settle(record, state, entry.revision)

    # ------------------------------------------------------------------ joins

    @staticmethod
    def join_kv_key(trigger_id: str) -> str:
        return "j." + derived_id(trigger_id)

    async def progress(self, trigger_id: str) -> tuple[JoinProgress, int]:
        """The join's progress and revision (revision 0: none recorded yet)."""
        try:
            entry = await self._kv(self.joins).get(self.join_kv_key(trigger_id))
        except nats.js.errors.KeyNotFoundError:
            return JoinProgress(trigger_id=trigger_id), 0
        try:
            assert entry.value is not None and entry.revision is not None
            return JoinProgress.model_validate_json(entry.value), entry.revision
        except (ValidationError, AssertionError):
            log.error("join progress of %s is unreadable; starting it afresh", trigger_id)
            return JoinProgress(trigger_id=trigger_id), entry.revision or 0

    async def save_progress(self, progress: JoinProgress, revision: int) -> int | None:
        """Compare-and-set; ``None`` if another writer got there first (re-read and merge)."""
        kv = self._kv(self.joins)
        key = self.join_kv_key(progress.trigger_id)
        data = progress.model_dump_json().encode()
        try:
            if revision == 0:
                return await kv.create(key, data)
            return await kv.update(key, data, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    @staticmethod
    def _kv(kv: KeyValue | None) -> KeyValue:
        if kv is None:
            raise RuntimeError("the engine store is not open")
        return kv
