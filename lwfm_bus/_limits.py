"""Every bound on input, stated once: integers, strings, lists, nesting, sizes.

Whatever crosses an edge -- the wire, a file, a command-line argument, a remote
command's output -- is held to these, so that no input can stop a reader: an
integer that SQLite cannot store, a 10 000-deep JSON document that exhausts the
recursion limit, a file that fills memory.  The README's "Limits" table and the JSON
Schemas (generated from the models that use these types) say the same numbers.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import IO, Annotated, Any

from pydantic import Field, StrictInt

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "FiniteFloat",
    "Int64",
    "NonNegativeInt64",
    "PositiveFiniteFloat",
    "PositiveInt64",
    "StrictInt64",
    "depth_of",
    "load_json_bounded",
    "load_toml_bounded",
    "read_text_bounded",
]

INT_MIN = -(2**63)
"""Smallest integer anywhere (a metadata value, an exit code, a size): SQLite's INTEGER range."""
INT_MAX = 2**63 - 1
"""Largest integer anywhere."""
MAX_DEPTH = 64
"""Deepest nesting of any JSON, TOML or YAML input (objects and arrays)."""
MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest input file read whole (trigger files, query files, sites and federation files)."""

Int64 = Annotated[int, Field(ge=INT_MIN, le=INT_MAX)]
StrictInt64 = Annotated[StrictInt, Field(ge=INT_MIN, le=INT_MAX)]
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT_MAX)]
PositiveInt64 = Annotated[int, Field(ge=1, le=INT_MAX)]


def depth_of(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests lists and dicts, counting up to ``limit + 1`` at most (no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _nesting_of_text(text: str, limit: int) -> int:
    """The deepest bracket nesting of JSON text, outside strings, without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def load_json_bounded(text: str, what: str, limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses input nested deeper than ``limit`` with a ValueError naming ``what``."""
    if _nesting_of_text(text, limit) > limit:
        raise ValueError(f"{what}: nested deeper than {limit} levels")
    return json.loads(text)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFiniteFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def read_text_bounded(source: Path | IO[str], what: str, limit: int = MAX_FILE_BYTES) -> str:
    """A whole text file (or stdin), refusing one larger than ``limit`` with a ValueError naming ``what``.

    Raises OSError as reading does, and ValueError for a file too large or not UTF-8.
    """
    try:
        if isinstance(source, Path):
            with source.open("r", encoding="utf-8") as f:
                text = f.read(limit + 1)
        else:
            text = source.read(limit + 1)
    except UnicodeDecodeError:
        raise ValueError(f"{what}: not UTF-8 text") from None
    if len(text) > limit:
        raise ValueError(f"{what}: larger than {limit} characters")
    return text


def read_toml_file(path: Path, what: str = "") -> dict[str, Any]:
    """A TOML file, read within the size and depth limits.

    Every failure is a ValueError whose text is the one line a user reads (``cannot
    read <what> <path>: ...``, ``<path>: not valid TOML: ...``, too large, too deep):
    the sites, federation and cluster files are read and refused alike.
    """
    try:
        return load_toml_bounded(read_text_bounded(path, str(path)), str(path))
    except tomllib.TOMLDecodeError as exc:  # a ValueError too: said with what it is first
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what + ' ' if what else ''}{path}: {exc.strerror or exc}") from None


def load_toml_bounded(text: str, what: str, limit: int = MAX_DEPTH) -> dict[str, Any]:
    """``tomllib.loads`` that refuses nesting deeper than ``limit`` (ValueError naming ``what``).

    tomllib parses nested arrays and inline tables recursively, so a deep enough document
    exhausts Python's recursion limit before any depth can be checked: that is caught too.
    """
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise ValueError(f"{what}: nested deeper than {limit} levels") from None
    if depth_of(doc, limit) > limit:
        raise ValueError(f"{what}: nested deeper than {limit} levels")
    return doc
