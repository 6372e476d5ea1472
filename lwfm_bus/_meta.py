"""Typed, bounded metadata values.

Metadata travels in every data event and is indexed by key and value, so it is held
to a small, typed vocabulary: strings, integers (64-bit, see :mod:`._limits`), floats,
booleans and flat lists of them.  Bounds are deliberately modest -- metadata describes
data, it is not data.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, TypeAlias

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictFloat, StrictStr, StringConstraints

from ._limits import INT_MAX, INT_MIN, StrictInt64

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
    | StrictInt64
    | Annotated[StrictFloat, AfterValidator(_finite)]
    | Annotated[StrictStr, Field(max_length=MAX_STRING)]
)


def _check_value(value: object) -> object:
    """One clear reason for a value out of bounds, instead of one type error per union member.

    It also keeps an integer too large for SQLite from turning into a float (a strict
    float accepts integers): it is refused, whatever its size.
    """
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) > MAX_LIST:
        raise ValueError(f"too many items ({len(value)} > {MAX_LIST})")
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            digits = len(str(abs(item))) if abs(item).bit_length() < 14_000 else "thousands of"
            raise ValueError(f"integer out of range ({digits} digits; integers must lie within -2^63 .. 2^63-1)")
        if isinstance(item, str) and len(item) > MAX_STRING:
            raise ValueError(f"too long ({len(item)} > {MAX_STRING} characters)")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("metadata floats must be finite (no NaN or infinity)")
        if isinstance(item, list | dict):
            raise ValueError("a metadata list holds strings, numbers and booleans only (no nesting)")
    return value


MetaValue: TypeAlias = Annotated[
    MetaScalar | Annotated[list[MetaScalar], Field(max_length=MAX_LIST)], BeforeValidator(_check_value)
]
Metadata: TypeAlias = Annotated[dict[MetaKey, MetaValue], Field(max_length=MAX_KEYS)]
