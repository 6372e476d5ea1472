"""A small, safe expression language for loop conditions (``until: {expr: "metadata.loss < 0.01"}``).

Users who do not program still need "stop when the residual is small".  Python's
syntax is familiar, so the text is parsed with :func:`ast.parse` -- which only
parses -- and the tree is then *interpreted here*, node by node, from a whitelist.
Nothing is ever handed to ``eval``, ``exec`` or ``compile``; no attribute of any
Python object is ever read: ``a.b`` is a key lookup in a mapping the caller bound.

Allowed: literals (numbers, strings, booleans, None), tuples and lists of
expressions, names the caller binds, ``a.b`` and ``a["b"]``/``a[0]`` lookups with
constant keys, comparisons (chained, ``in``, ``not in``), ``and``/``or``/``not``,
unary ``-``/``+``, ``+ - * / // %`` (no ``**``), ``x if c else y``, and calls of
:data:`FUNCTIONS`.  Limits bound the text, the tree and every string built, so an
expression cannot exhaust memory.  File access is the caller's business: it binds
values (such as ``output``) instead of the language reading files.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import PipelineError, PipelineIssue
from ._parsed import ParsedText

__all__ = ["FUNCTIONS", "MAX_EXPR", "MAX_NODES", "MAX_STRING", "Expr", "ExprError", "compile_expr"]

MAX_EXPR = 1000
"""Longest expression text."""
MAX_NODES = 200
"""Most syntax-tree nodes in one expression."""
MAX_STRING = 10_000
"""Longest string or list any step of an evaluation may build."""

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
}
"""The only callables: pure, and applied to plain values only."""

_PLAIN = (type(None), bool, int, float, str, list, tuple)
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: operator.contains(b, a),
    ast.NotIn: lambda a, b: not operator.contains(b, a),
}
_ALLOWED = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Subscript, ast.Compare, ast.BoolOp,
    ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp, ast.Call, ast.Tuple, ast.List, ast.IfExp,
    *_BINARY, *_COMPARE,
)  # fmt: skip


class ExprError(PipelineError):
    """An expression was refused (when compiled) or failed (when evaluated); ``offset`` is 0-based."""

    def __init__(self, message: str, text: str, offset: int) -> None:
        super().__init__(issues=[PipelineIssue(f"{message} (at column {offset + 1} of the expression)")])
        self.text = text
        self.offset = offset


class Expr(ParsedText):
    """A compiled expression: evaluate it with :meth:`evaluate`; ``names`` are the names it needs bound."""

    __slots__ = ("_tree", "names")
    MAX_LENGTH = MAX_EXPR

    def __init__(self, text: str) -> None:
        self.text = text
        self._tree = _parse(text)
        self.names = frozenset(_free_names(self._tree))

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """The value of the expression with ``variables`` bound (plain data: mappings, lists, scalars)."""
        return _Eval(self.text, variables).run(self._tree.body)


def compile_expr(text: str) -> Expr:
    """Parse and check ``text``; raise :class:`ExprError` with the column of the first problem."""
    return Expr(text)


def _position(text: str, lineno: int, col_offset: int) -> int:
    """Character offset in ``text`` of an ast position (1-based line, UTF-8 byte column)."""
    lines = text.split("\n")
    line = max(lineno, 1) - 1
    before = sum(len(s) + 1 for s in lines[:line])
    raw = lines[line].encode()[:col_offset] if line < len(lines) else b""
    return before + len(raw.decode(errors="ignore"))


def _offset(text: str, node: ast.AST) -> int:
    return _position(text, getattr(node, "lineno", 1), getattr(node, "col_offset", 0))


def _end(text: str, node: ast.AST) -> int:
    return _position(text, getattr(node, "end_lineno", None) or 1, getattr(node, "end_col_offset", None) or 0)


def _parse(text: str) -> ast.Expression:
    if not isinstance(text, str):
        raise TypeError("an expression is a string")
    if not text.strip():
        raise ExprError("empty expression", text, 0)
    if len(text) > MAX_EXPR:
        raise ExprError(f"expression longer than {MAX_EXPR} characters", text, MAX_EXPR)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        at = sum(len(s) + 1 for s in text.split("\n")[: max((exc.lineno or 1) - 1, 0)]) + max((exc.offset or 1) - 1, 0)
        raise ExprError(f"syntax error: {exc.msg}", text, min(at, len(text))) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
        raise ExprError(f"cannot parse: {type(exc).__name__}", text, 0) from None
    for count, node in enumerate(ast.walk(tree), start=1):
        if count > MAX_NODES:
            raise ExprError(f"expression has more than {MAX_NODES} parts", text, 0)
        _check(node, text)
    return tree


_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Pow: "**", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
    ast.MatMult: "@", ast.Invert: "~", ast.Is: "is", ast.IsNot: "is",
}  # fmt: skip


def _operator_at(text: str, node: ast.AST) -> tuple[ast.AST, int] | None:
    """A forbidden operator of ``node`` and its offset (operators carry no position of their own)."""
    ops: list[tuple[ast.AST, ast.AST]] = []
    if isinstance(node, ast.BinOp):
        ops = [(node.op, node.left)]
    elif isinstance(node, ast.UnaryOp):
        ops = [(node.op, node)]
    elif isinstance(node, ast.Compare):
        ops = list(zip(node.ops, [node.left, *node.comparators], strict=False))
    for op, before in ops:
        if type(op) in _SYMBOLS:
            start = _offset(text, before) if before is node else _end(text, before)
            found = text.find(_SYMBOLS[type(op)], start)
            return op, found if found >= 0 else _offset(text, node)
    return None


def _check(node: ast.AST, text: str) -> None:
    forbidden = _operator_at(text, node)
    if forbidden is not None:
        op, at = forbidden
        raise ExprError(f"the operator '{_SYMBOLS[type(op)]}' is not allowed", text, at)
    if not isinstance(node, _ALLOWED):
        raise ExprError(f"{type(node).__name__} is not allowed in an expression", text, _offset(text, node))
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool | int | float | str | type(None)):
        raise ExprError(f"a {type(node.value).__name__} literal is not allowed", text, _offset(text, node))
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        if name.startswith("_"):
            raise ExprError(f"names starting with '_' are not allowed: {name!r}", text, _offset(text, node))
    if isinstance(node, ast.Subscript):
        if not _constant_key(node.slice):
            raise ExprError("a subscript must be a constant: x['key'] or x[0]", text, _offset(text, node))
        if isinstance(node.slice, ast.Constant) and str(node.slice.value).startswith("_"):
            raise ExprError("keys starting with '_' are not allowed", text, _offset(text, node.slice))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ExprError(f"only these functions can be called: {allowed}", text, _offset(text, node))
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExprError("function calls take plain positional arguments only", text, _offset(text, node))


def _constant_key(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, int | str) and not isinstance(node.value, bool)


def _key(node: ast.expr) -> int | str:
    """The constant key of a subscript (checked by :func:`_constant_key` at compile time)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        assert isinstance(node.operand.value, int)
        return -node.operand.value
    assert isinstance(node, ast.Constant) and isinstance(node.value, int | str)
    return node.value


def _free_names(tree: ast.Expression) -> set[str]:
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


class _Eval:
    """One evaluation: the variables, and the text for error positions."""

    def __init__(self, text: str, variables: Mapping[str, Any]) -> None:
        self.text = text
        self.variables = variables

    def fail(self, node: ast.AST, message: str) -> ExprError:
        return ExprError(message, self.text, _offset(self.text, node))

    def run(self, node: ast.expr) -> Any:
        try:
            value = self.node(node)
        except ExprError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, KeyError, IndexError) as exc:
            raise self.fail(node, f"{type(exc).__name__}: {exc}") from None
        return self.plain(node, value)

    def plain(self, node: ast.AST, value: Any) -> Any:
        """Refuse anything but plain data, and any string or list beyond the size limit."""
        if not isinstance(value, _PLAIN) and not isinstance(value, Mapping):
            raise self.fail(node, f"a {type(value).__name__} value is not plain data")
        if isinstance(value, str | list | tuple) and len(value) > MAX_STRING:
            raise self.fail(node, f"a value longer than {MAX_STRING} elements")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(node, "the result is not a finite number")
        return value

    def node(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.variables:
                raise self.fail(node, f"name {node.id!r} is not defined")
            return self.plain(node, self.variables[node.id])
        if isinstance(node, ast.Attribute | ast.Subscript):
            return self.lookup(node)
        if isinstance(node, ast.Tuple | ast.List):
            items = [self.run(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.BoolOp):
            value: Any = None
            for operand in node.values:
                value = self.run(operand)
                if bool(value) is isinstance(node.op, ast.Or):  # short-circuit
                    return value
            return value
        if isinstance(node, ast.UnaryOp):
            operand = self.run(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            if not isinstance(operand, int | float):
                raise self.fail(node, "unary minus or plus needs a number")
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp):
            return self.binary(node, self.run(node.left), self.run(node.right))
        if isinstance(node, ast.Compare):
            left = self.run(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.run(right_node)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.run(node.body) if self.run(node.test) else self.run(node.orelse)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [self.run(a) for a in node.args]
            if node.func.id == "str" and args and not isinstance(args[0], str | int | float | bool | type(None)):
                raise self.fail(node, "str() takes a scalar")
            return FUNCTIONS[node.func.id](*args)
        raise self.fail(node, f"{type(node).__name__} is not allowed")  # unreachable after _check

    def lookup(self, node: ast.Attribute | ast.Subscript) -> Any:
        container = self.run(node.value)
        key = node.attr if isinstance(node, ast.Attribute) else _key(node.slice)
        if isinstance(container, Mapping):
            if key not in container:
                raise self.fail(node, f"no key {key!r}")
            return self.plain(node, container[key])
        if isinstance(node, ast.Subscript) and isinstance(container, list | tuple | str) and isinstance(key, int):
            return container[key]
        raise self.fail(node, f"cannot look up {key!r} in a {type(container).__name__}")

    def binary(self, node: ast.BinOp, left: Any, right: Any) -> Any:
        if isinstance(node.op, ast.Mult):
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_STRING:
                    raise self.fail(node, f"a value longer than {MAX_STRING} elements")
        joined = isinstance(left, str | list | tuple) and isinstance(right, type(left))
        if isinstance(node.op, ast.Add) and joined and len(left) + len(right) > MAX_STRING:
            raise self.fail(node, f"a value longer than {MAX_STRING} elements")
        return _BINARY[type(node.op)](left, right)
