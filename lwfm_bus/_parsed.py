"""Values written as a string in files and held parsed in Python: templates and expressions.

They compare and hash by their text, validate from a string in pydantic models (and
so appear as ``{"type": "string", "maxLength": ...}`` in the JSON Schema), and
serialise back to the text, so a dumped pipeline reads like the file it came from.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

__all__ = ["ParsedText"]


class ParsedText:
    """Subclasses set ``MAX_LENGTH`` and parse ``text`` in ``__init__`` (raising on bad text)."""

    __slots__ = ("text",)
    MAX_LENGTH: ClassVar[int]
    text: str

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, ParsedText) and other.text == self.text

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.text))

    @classmethod
    def _coerce(cls, value: Any) -> Self:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(value)
        raise PydanticCustomError("string_type", "Input should be a valid string")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # In files and schemas it is a plain string; in Python, a parsed object (or a string to parse).
        return core_schema.json_or_python_schema(
            json_schema=core_schema.no_info_after_validator_function(
                cls, core_schema.str_schema(max_length=cls.MAX_LENGTH)
            ),
            python_schema=core_schema.no_info_plain_validator_function(cls._coerce),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.text),
        )
