"""YAML to plain data, remembering where every value and key was written.

PyYAML's loaders build Python objects straight from the text and forget positions,
keep the last of two equal keys without a word, and read ``no`` as False and
``010`` as 8 (YAML 1.1).  Here the text is only *composed* into a node tree with a
safe loader (composing constructs nothing), and this module walks the tree itself:

* every path (``("steps", "split", "run")``) gets the line and column of its value
  and of its key, so any later error can point at the file;
* a repeated key is an error at the second occurrence;
* scalars follow the YAML 1.2 core schema (``true``/``false``, ``null``, decimal,
  ``0o``/``0x`` integers, floats); any other tag (``!!binary``, ``!!python/...``,
  custom ``!tags``) is refused, and merge keys (``<<``) too;
* the number of nodes (aliases included) and the depth are bounded, so a
  "billion laughs" document or a recursive alias cannot exhaust memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from .._errors import PipelineIssue

__all__ = ["MAX_DEPTH", "MAX_NODES", "Document", "parse_scalar", "read_yaml"]

MAX_NODES = 100_000
MAX_DEPTH = 64

Path = tuple[str | int, ...]
_CORE = "tag:yaml.org,2002:"


class _Loader(yaml.SafeLoader):
    """A safe loader whose implicit types are YAML 1.2 core's (no ``yes``/``no``, no sexagesimal)."""


_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _Loader.add_implicit_resolver(_CORE + _tag, re.compile(_pattern), list(_first))


def _int(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits.startswith(("0o", "0x")):
        return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
    return sign * int(digits, 10)


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    return math.nan if lowered == ".nan" else float(text)


_SCALARS: dict[str, Callable[[str], Any]] = {
    _CORE + "str": str,
    _CORE + "null": lambda _text: None,
    _CORE + "bool": lambda text: text.lower() == "true",
    _CORE + "int": _int,
    _CORE + "float": _float,
}


@dataclass
class Document:
    """One YAML file as plain data, with the position of every value and key (1-based line, column)."""

    file: str
    text: str
    data: Any = None
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    styles: dict[Path, str | None] = field(default_factory=dict)
    issues: list[PipelineIssue] = field(default_factory=list)

    def issue(self, path: Path, message: str, at: tuple[int, int] | None = None) -> None:
        line, column = at or (None, None)
        self.issues.append(PipelineIssue(message, path, self.file, line, column))

    def strings(self) -> Iterator[tuple[Path, str]]:
        """Every string value with its path."""
        stack: list[tuple[Path, Any]] = [((), self.data)]
        while stack:
            path, value = stack.pop()
            if isinstance(value, str):
                yield path, value
            elif isinstance(value, dict):
                stack.extend(((*path, k), v) for k, v in value.items())
            elif isinstance(value, list):
                stack.extend(((*path, i), v) for i, v in enumerate(value))


class _TooBig(Exception):
    pass


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def parse_scalar(text: str) -> Any:
    """One value as YAML reads it (``3`` -> 3, ``true`` -> True, ``a b`` -> "a b"); ValueError if not a scalar."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ValueError(f"not a YAML value: {exc}") from None
    if node is None:
        return None
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALARS:
        raise ValueError("expected one value (a string, number or boolean)")
    return _SCALARS[node.tag](node.value)


def read_yaml(file: str, text: str) -> Document:
    """Compose ``text`` (already size-checked) into a :class:`Document`; problems go to ``doc.issues``."""
    doc = Document(file, text)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else None
        message = " ".join(s for s in (exc.context, exc.problem) if s) or "invalid YAML"
        doc.issue((), f"invalid YAML: {message}", where)
        return doc
    except yaml.YAMLError as exc:  # e.g. a reader error: a character YAML does not allow
        doc.issue((), f"invalid YAML: {exc}")
        return doc
    if root is None:
        doc.issue((), "the file is empty: a pipeline starts with 'pipeline: 1'", (1, 1))
        return doc
    walker = _Walker(doc)
    try:
        doc.data = walker.walk(root, (), 0)
    except _TooBig as exc:
        doc.data = None
        doc.issue((), str(exc), _mark(root))
    return doc


class _Walker:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.count = 0

    def walk(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(f"more than {MAX_NODES} values (aliases expanded): refusing the document")
        if depth > MAX_DEPTH:
            raise _TooBig(f"nested deeper than {MAX_DEPTH} levels (or a recursive alias)")
        self.doc.values[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            self.doc.styles[path] = node.style
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.issue(path, "a key must be plain text, not a list or a mapping", _mark(key_node))
                continue
            key = key_node.value
            if key == "<<" and key_node.tag == _CORE + "str" and key_node.style is None:
                self.doc.issue(path, "merge keys (<<) are not supported: write the keys out", _mark(key_node))
                continue
            if key in out:
                first = self.doc.keys[(*path, key)][0]
                self.doc.issue((*path, key), f"duplicate key {key!r} (first at line {first})", _mark(key_node))
                continue
            self.doc.keys[(*path, key)] = _mark(key_node)
            out[key] = self.walk(value_node, (*path, key), depth + 1)
        return out

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        construct = _SCALARS.get(node.tag)
        if construct is None:
            self.doc.issue(path, f"the tag {node.tag!r} is not supported: write a plain value", _mark(node))
            return node.value
        try:
            return construct(node.value)
        except ValueError:
            self.doc.issue(path, f"{node.value!r} is not a valid {node.tag.removeprefix(_CORE)}", _mark(node))
            return node.value
