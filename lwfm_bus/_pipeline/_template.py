"""Command templates: ``{params.n}`` and ``{steps.split.outputs.parts}`` placeholders in strings.

A placeholder is a dotted name in braces and nothing else: no format specs, no
indexing, no attribute access.  ``str.format`` would allow ``{0.__class__}`` and
friends on the objects it is handed; here a value is found only by looking names up
in mappings the caller built, so a pipeline file can never reach an object's
internals.  ``{{`` and ``}}`` stand for literal braces.

Templates are parsed when a pipeline is validated (so a stray brace is an error with
its position) and rendered when a run is compiled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .._errors import PipelineError, PipelineIssue
from .._parsed import ParsedText

__all__ = ["MAX_RENDERED", "MAX_TEMPLATE", "Template", "TemplateError"]

MAX_TEMPLATE = 16_384
"""Longest template text."""
MAX_RENDERED = 65_536
"""Longest rendered string (a job argument may not be longer)."""

_SEGMENT = r"[A-Za-z_][A-Za-z0-9_\-]*"
_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
# Order matters: doubled braces first, then a full placeholder, then a lone brace.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateError(PipelineError):
    """A template is malformed, or a value is missing when it is rendered.

    ``offset`` is the 0-based position in ``text`` of the offending brace, so a caller
    that knows where the text sits in a file can point at the exact column.
    """

    def __init__(self, message: str, text: str, offset: int) -> None:
        super().__init__(issues=[PipelineIssue(message)])
        self.text = text
        self.offset = offset


class Template(ParsedText):
    """A parsed template: literal text and placeholders, in order.

    Compare and hash by text; render with :meth:`render`.
    """

    __slots__ = ("_parts",)
    MAX_LENGTH = MAX_TEMPLATE

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError("a template is a string")
        if len(text) > MAX_TEMPLATE:
            raise TemplateError(f"template longer than {MAX_TEMPLATE} characters", text, MAX_TEMPLATE)
        self.text = text
        self._parts = _parse(text)

    @property
    def refs(self) -> tuple[str, ...]:
        """The dotted names of the placeholders, in order of appearance (repeats kept)."""
        return tuple(p.name for p in self._parts if isinstance(p, _Ref))

    @property
    def is_literal(self) -> bool:
        """True when the template has no placeholder."""
        return not self.refs

    def render(self, values: Mapping[str, Any]) -> str:
        """Substitute every placeholder.

        A name is looked up first as a whole dotted key (``values["params.n"]``), then
        segment by segment through nested mappings (``values["params"]["n"]``).  Values
        must be strings, numbers or booleans (written ``true``/``false``); anything else,
        or a missing name, is a :class:`TemplateError`.
        """
        out: list[str] = []
        size = 0
        for part in self._parts:
            piece = part if isinstance(part, str) else _text(_lookup(values, part, self.text), part, self.text)
            size += len(piece)
            if size > MAX_RENDERED:
                raise TemplateError(f"rendered text is longer than {MAX_RENDERED} characters", self.text, 0)
            out.append(piece)
        return "".join(out)

    def __str__(self) -> str:
        return self.text


class _Ref:
    __slots__ = ("name", "offset")

    def __init__(self, name: str, offset: int) -> None:
        self.name = name
        self.offset = offset


def _parse(text: str) -> tuple[str | _Ref, ...]:
    parts: list[str | _Ref] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        if token in ("{", "}"):
            raise TemplateError(
                f"lone {token!r} at column {m.start() + 1}: write {token * 2!r} for a literal brace", text, m.start()
            )
        name = m.group(1)
        if not _NAME.fullmatch(name):
            raise TemplateError(
                f"{token!r} at column {m.start() + 1} is not a placeholder: use a dotted name such as "
                "{params.n}, or write '{{' and '}}' for literal braces",
                text,
                m.start(),
            )
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_Ref(name, m.start()))
    literal.append(text[pos:])
    if "".join(literal):
        parts.append("".join(literal))
    return tuple(parts)


def _lookup(values: Mapping[str, Any], ref: _Ref, text: str) -> Any:
    if ref.name in values:
        return values[ref.name]
    current: Any = values
    for segment in ref.name.split("."):
        if not isinstance(current, Mapping) or segment not in current:
            raise TemplateError(f"no value for {{{ref.name}}}", text, ref.offset)
        current = current[segment]
    return current


def _text(value: Any, ref: _Ref, text: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TemplateError(f"{{{ref.name}}} is a {type(value).__name__}, not a string or a number", text, ref.offset)
