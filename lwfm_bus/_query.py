"""Questions to the metadata repository and the shape of its answers.

A query is the same signature a data-flow trigger uses (key -> equality, glob,
numeric range or presence, all of which must hold), plus filters on where the data
is and who made it, an order and a page.  Sharing the predicate models means a user
can try a trigger's signature with ``find`` before registering it, and both read
lists the same way (a list value matches if one element does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._limits import NonNegativeInt64
from ._meta import Metadata, MetaKey
from ._subjects import Token
from ._triggers import MAX_SIGNATURE_KEYS, Predicate

__all__ = ["MAX_PAGE", "DataPage", "DataQuery", "DataRecord"]

MAX_PAGE = 10_000

OrderBy = Literal["time", "location", "size"] | Annotated[str, Field(pattern=r"^meta:[A-Za-z_][A-Za-z0-9_\-]{0,63}$")]


class DataQuery(BaseModel):
    """What to find: every predicate in ``where`` must hold, and every filter given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    where: dict[MetaKey, Predicate] = Field(
        default_factory=dict, max_length=MAX_SIGNATURE_KEYS, description="key -> predicate; a bare value means eq."
    )
    site: Token | None = Field(default=None, description="Only data on this site.")
    workflow_id: Token | None = Field(default=None, description="Only data of this workflow.")
    job_id: Token | None = Field(default=None, description="Only data produced or recorded by this job.")
    order_by: OrderBy = Field(default="time", description="time (arrival order), location, size, or meta:<key>.")
    descending: bool = Field(default=False, description="Newest (or largest) first.")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = Field(default=100, description="Page size.")
    offset: NonNegativeInt64 = Field(default=0, description="Records to skip: the previous page's next_offset.")


@dataclass(frozen=True)
class DataRecord:
    """One notated data item, as the index holds it."""

    data_id: str
    site: str
    location: str
    metadata: Metadata
    time: datetime
    size: int | None = None
    checksum: str | None = None
    job_id: str | None = None
    workflow_id: str | None = None
    direction: str | None = None
    origin_site: str | None = None
    origin: str | None = None
    seq: int = 0


@dataclass(frozen=True)
class DataPage:
    """One page of answers; ``next_offset`` is None on the last page."""

    records: list[DataRecord]
    next_offset: int | None
