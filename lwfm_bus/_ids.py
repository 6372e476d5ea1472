"""Ids: fresh ones for new things, derived ones where two processes must agree."""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["derived_id", "new_id"]


def new_id() -> str:
    """A fresh, collision-free id (also a valid subject token)."""
    return uuid.uuid4().hex


def derived_id(*parts: str) -> str:
    """The same id from the same parts, in every process: how a replayed firing finds its job."""
    h = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return h[:32]
