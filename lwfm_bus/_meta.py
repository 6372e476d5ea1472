"""Typed, bounded metadata values.

Metadata travels in every data event and is indexed by key and value, so it is held
to a small, typed vocabulary: strings, integers, floats, booleans and flat lists of
them.  Bounds are deliberately modest -- metadata describes data, it is not data.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, TypeAlias

from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr, StringConstraints

__all__ = ["MAX_KEYS", "MAX_LIST", "MAX_STRING", "MetaKey", "MetaScalar", "MetaValue", "Metadata"]

MAX_KEYS = 128
MAX_LIST = 256
MAX_STRING = 4096

# A key starts with a letter or "_", then up to 63 letters, digits, "_" or "-".
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("metadata floats must be finite (no NaN or infinity)")
    return value


MetaKey = Annotated[str, StringConstraints(pattern=_KEY.pattern)]
MetaScalar: TypeAlias = (
    StrictBool
    | StrictInt
    | Annotated[StrictFloat, AfterValidator(_finite)]
    | Annotated[StrictStr, Field(max_length=MAX_STRING)]
)
MetaValue: TypeAlias = MetaScalar | Annotated[list[MetaScalar], Field(max_length=MAX_LIST)]
Metadata: TypeAlias = Annotated[dict[MetaKey, MetaValue], Field(max_length=MAX_KEYS)]
