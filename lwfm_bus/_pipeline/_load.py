"""Loading pipeline files: every problem, in every file, as ``FILE:LINE:COL: field.path: message``.

The steps: read a bounded file; compose the YAML with positions (:mod:`._yaml`);
apply ``--set`` overrides to ``params``; validate with the pydantic models; then load
each nested pipeline relative to the file that names it, refusing cycles, and check
what crosses the boundary (``with:`` against the nested inputs, references to its
outputs, and that it neither names nor reaches into an ancestor's workspace).

A pydantic error carries a ``loc`` (a path through the data, sometimes with the name
of a union member in it); it is walked through the plain data to find the deepest
part that exists, and that part's position is the error's position.  Checks raised as
:class:`PipelineError` from the models' validators carry their own sub-paths.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path as FsPath
from typing import Any

from pydantic import ValidationError

from .._errors import PipelineError, PipelineIssue
from .._expr import ExprError
from ._check import hint, ref_issues
from ._model import Pipeline
from ._template import TemplateError
from ._types import NAME_PATTERN
from ._yaml import Document, parse_scalar, read_yaml

__all__ = ["MAX_FILE_BYTES", "MAX_NESTING", "load_pipeline", "parse_override"]

MAX_FILE_BYTES = 1 << 20
MAX_NESTING = 8
"""Most levels of pipelines within pipelines."""

Path = tuple[str | int, ...]
_WORKSPACE_REF = re.compile(r"workspace:([A-Za-z0-9_\-:@+=~^]+)")
_PATTERNS = {
    NAME_PATTERN: "must start with a letter or _, then letters, digits, _ or - (at most 64)",
    r"^[A-Za-z0-9_\-:@+=~^]{1,128}$": "use 1-128 letters, digits and _-:@+=~^ (no dots or spaces)",
    r"^[A-Za-z_][A-Za-z0-9_]{0,255}$": "an environment variable name: letters, digits and _",
}


def parse_override(text: str) -> tuple[str, Any]:
    """``"n=3"`` -> ``("n", 3)``: the value is read as a YAML scalar (an empty value is the empty string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(NAME_PATTERN, key):
        raise PipelineError(f"--set {text!r}: expected NAME=VALUE with a param name")
    try:
        value = parse_scalar(raw) if raw.strip() else ""
    except ValueError as exc:
        raise PipelineError(f"--set {text!r}: {exc}") from None
    return key, value


def load_pipeline(
    path: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    sites: Collection[str] | Callable[[], Collection[str]] | None = None,
    sites_file: str | os.PathLike[str] | None = None,
) -> Pipeline:
    """Load, validate and resolve a pipeline file and every nested one.

    ``overrides`` replace the top pipeline's ``params`` defaults (each must name a
    declared param).  ``sites``, when given, are the site names a step may run on (the
    configured ones, read from ``sites_file``): any other is an issue at its line.  A
    callable is called once, and only when a file names a site.
    Raises :class:`PipelineError` listing every issue found.
    """
    loader = _Loader(sites, None if sites_file is None else os.fspath(sites_file))
    result = loader.load(os.fspath(path), dict(overrides or {}), (), ())
    if loader.issues or result is None:
        unique = dict.fromkeys(loader.issues)  # a file nested twice is reported once
        issues = sorted(unique, key=lambda i: (i.file or "", i.line or 0, i.column or 0))
        raise PipelineError(issues=issues or [PipelineIssue("invalid pipeline", (), os.fspath(path))])
    return result


class _Loader:
    def __init__(
        self, sites: Collection[str] | Callable[[], Collection[str]] | None = None, sites_file: str | None = None
    ) -> None:
        self.sites = sites
        self.sites_file = sites_file
        self.issues: list[PipelineIssue] = []
        # A file nested by many steps is loaded once per (file, ancestors' workspaces, depth): without this, a
        # few files that each nest the next one ten times would be loaded ten to the power of the depth times.
        self.loaded: dict[tuple[FsPath, tuple[str, ...], int], Pipeline | None] = {}

    def load(
        self, file: str, overrides: dict[str, Any], stack: tuple[FsPath, ...], workspaces: tuple[str, ...]
    ) -> Pipeline | None:
        doc = self._read(file)
        if doc is None:
            return None
        self._override(doc, overrides)
        if workspaces:
            self._check_workspace_refs(doc, workspaces)
        try:
            pipeline = Pipeline.model_validate(doc.data)
        except ValidationError as exc:
            self.issues.extend(doc.issues)
            self.issues.extend(_translate(doc, exc))
            return None
        self.issues.extend(doc.issues)
        real = FsPath(file).resolve()
        pipeline._source = real
        if pipeline.workspace is not None and pipeline.workspace in workspaces:
            self._at(doc, ("workspace",), "a nested pipeline gets its own workspace and cannot use its parent's")
        if stack and pipeline.schedule is not None:
            self._at(
                doc,
                ("schedule",),
                "a nested pipeline runs when its parent's step does: only the file run has a schedule",
            )
        if stack and pipeline.notify is not None:
            self._at(doc, ("notify",), "a nested pipeline is part of its parent's run: only the file run notifies")
        self._check_sites(doc, pipeline)
        inner = (*workspaces, pipeline.workspace) if pipeline.workspace else workspaces
        outputs: dict[str, frozenset[str]] = {}
        for name, step in pipeline.steps.items():
            if step.pipeline is None:
                continue
            child_file = os.path.normpath(os.path.join(os.path.dirname(file), step.pipeline))
            child_real = FsPath(child_file).resolve()
            where: Path = ("steps", name, "pipeline")
            if child_real in (*stack, real):
                chain = " -> ".join(p.name for p in (*stack, real, child_real))
                self._at(doc, where, f"pipelines nest in a cycle: {chain}")
                continue
            if len(stack) + 1 >= MAX_NESTING:
                self._at(doc, where, f"pipelines nest more than {MAX_NESTING} levels deep")
                continue
            if not child_real.is_file():
                self._at(doc, where, f"no such file: {child_file}")
                continue
            key = (child_real, inner, len(stack))
            if key not in self.loaded:
                self.loaded[key] = self.load(child_file, {}, (*stack, real), inner)
            child = self.loaded[key]
            if child is not None:
                pipeline._nested[name] = child
                outputs[name] = frozenset(child.outputs)
                self._check_with(doc, name, step.with_, child, child_file)
        for issue in ref_issues(pipeline, outputs):
            self._at(doc, issue.path, issue.message)
        return pipeline

    def _read(self, file: str) -> Document | None:
        try:
            with open(file, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            self.issues.append(PipelineIssue(f"cannot read: {exc.strerror or exc}", (), file))
            return None
        if len(raw) > MAX_FILE_BYTES:
            self.issues.append(PipelineIssue(f"larger than {MAX_FILE_BYTES} bytes: refusing it", (), file))
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.issues.append(PipelineIssue(f"not UTF-8 text (byte {exc.start})", (), file))
            return None
        doc = read_yaml(file, text)
        if doc.data is None:
            self.issues.extend(doc.issues)
            return None
        return doc

    def _at(self, doc: Document, path: Path, message: str, needle: str | None = None) -> None:
        self.issues.append(_issue(doc, path, message, needle))

    def _at_key(self, doc: Document, path: Path, message: str) -> None:
        line, column = doc.keys.get(path, (None, None))
        self.issues.append(PipelineIssue(message, path, doc.file, line, column) if line else _issue(doc, path, message))

    def _check_sites(self, doc: Document, pipeline: Pipeline) -> None:
        """Every site a step runs on (its own, or the pipeline's default) is one of ``self.sites``."""
        if self.sites is None:
            return
        written: list[tuple[Path, str]] = []
        if isinstance(doc.data, dict) and "site" in doc.data:  # the default "local" is always there
            written.append((("site",), pipeline.site))
        written += [(("steps", name, "site"), step.site) for name, step in pipeline.steps.items() if step.site]
        if not written:
            return
        if callable(self.sites):
            self.sites = frozenset(self.sites())  # read once, and only for a file that names a site
        known = sorted(self.sites)
        listed = ", ".join(known)
        where = f"; see {self.sites_file}" if self.sites_file else ""
        for path, site in written:
            if site not in known:
                close = difflib.get_close_matches(site, known, n=1, cutoff=0.6)
                guess = f"did you mean {close[0]!r}? " if close else ""
                self._at(doc, path, f"unknown site {site!r} ({guess}configured: {listed}{where})")

    def _override(self, doc: Document, overrides: dict[str, Any]) -> None:
        if not overrides or not isinstance(doc.data, dict):
            return
        params = doc.data.get("params")
        params = dict(params) if isinstance(params, dict) else {}
        for key, value in overrides.items():
            if key not in params:
                doc.issue(("params", key), f"--set: the pipeline has no param {key!r}{hint(key, params)}")
            else:
                params[key] = value
        doc.data = {**doc.data, "params": params}

    def _check_workspace_refs(self, doc: Document, workspaces: tuple[str, ...]) -> None:
        for path, text in doc.strings():
            for m in _WORKSPACE_REF.finditer(text):
                if m[1] in workspaces:
                    message = f"'workspace:{m[1]}' is a parent's workspace: a nested pipeline uses its own"
                    self._at(doc, path, message, m[0])

    def _check_with(self, doc: Document, step: str, given: Mapping[str, Any], child: Pipeline, child_file: str) -> None:
        for key in given:
            if key not in child.inputs:
                message = f"{child_file} declares no input {key!r}{hint(key, child.inputs)}"
                self._at_key(doc, ("steps", step, "with", key), message)
        for key, decl in child.inputs.items():
            if decl.required and key not in given:
                self._at(doc, ("steps", step, "with"), f"{child_file} needs input {key!r}: supply it in 'with'")


# --------------------------------------------------------------------------- errors to positions


def _has(container: Any, part: str | int) -> bool:
    if isinstance(container, dict):
        return isinstance(part, str) and part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _locate(doc: Document, loc: Path) -> tuple[int | None, int | None, Path]:
    """The position for ``loc`` and the part of it that exists in the data (union tags are skipped)."""
    current: Any = doc.data
    resolved: Path = ()
    for part in loc:
        if _has(current, part):
            current, resolved = current[part], (*resolved, part)
    where = doc.values.get(resolved) if not isinstance(current, dict | list) else None
    where = where or doc.keys.get(resolved) or doc.values.get(resolved) or (1, 1)
    return where[0], where[1], resolved


def _issue(doc: Document, path: Path, message: str, needle: str | None = None) -> PipelineIssue:
    """An issue at ``path``, pointing at ``needle`` in the line if it is there.

    An issue about a placeholder (``{steps.a.outputs.x}: ...``) is its own needle.
    """
    line, column, resolved = _locate(doc, path)
    if needle is None and message.startswith("{") and "}: " in message:
        needle = message[: message.index("}: ") + 1]
    lines = doc.text.splitlines()
    if needle and line is not None and column is not None and line <= len(lines):
        found = lines[line - 1].find(needle, column - 1)
        column = found + 1 if found >= 0 else column
    return PipelineIssue(message, resolved, doc.file, line, column)


def _inner_column(doc: Document, path: Path, text: str, offset: int) -> int | None:
    """The exact column of ``offset`` in ``text`` if the value is written on one line, plain or quoted."""
    if path not in doc.values or "\n" in text:
        return None
    line, column = doc.values[path]
    style = doc.styles.get(path)
    if style not in (None, "'", '"'):
        return None
    start = column - 1 + (0 if style is None else 1)
    source = doc.text.splitlines()[line - 1] if line - 1 < len(doc.text.splitlines()) else ""
    return start + offset + 1 if source[start : start + len(text)] == text else None


def _translate(doc: Document, exc: ValidationError) -> list[PipelineIssue]:
    out: list[PipelineIssue] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p != "[key]")
        line, column, resolved = _locate(doc, loc)
        if "[key]" in err["loc"] or err["type"] == "extra_forbidden":
            line, column = doc.keys.get(resolved, (line, column))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, PipelineError):
            for issue in cause.issues:
                if issue.path:
                    out.append(_issue(doc, (*resolved, *issue.path), issue.message))
                    continue
                if isinstance(cause, TemplateError | ExprError):
                    column = _inner_column(doc, resolved, cause.text, cause.offset) or column
                out.append(PipelineIssue(issue.message, resolved, doc.file, line, column))
            continue
        if err["type"] == "missing":
            resolved = (*resolved, loc[-1])
        out.append(PipelineIssue(_message(err, resolved), resolved, doc.file, line, column))
    unique = {(i.path, i.message, i.line, i.column): i for i in out}
    return list(unique.values())


def _message(err: Any, path: Path) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        return f"unknown key {key!r}{hint(key, _allowed(path[:-1]))}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error" and path == ("pipeline",):
        return f"unsupported format version {value!r}: this lwfm-bus reads 'pipeline: 1'"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERNS:
        return f"{value!r}: {_PATTERNS[ctx['pattern']]}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "expected a mapping (key: value lines)"
    if kind in ("list_type", "tuple_type"):
        return "expected a list"
    if kind == "string_type" and isinstance(value, int | float | bool):
        return f"expected text: quote it ('{value}')"
    if kind == "string_type" and isinstance(value, dict) and len(value) == 1 and None in value.values():
        return f"a value starting with '{{' must be quoted: '{{{next(iter(value))}}}'"
    return str(msg).removeprefix("Value error, ")


@functools.cache
def _schema() -> dict[str, Any]:
    return Pipeline.model_json_schema(mode="validation")


def _allowed(path: Path) -> list[str]:
    """The keys the schema allows in the mapping at ``path`` (for "did you mean")."""
    root = _schema()

    def expand(node: Any) -> list[dict[str, Any]]:
        if not isinstance(node, dict):
            return []
        if "$ref" in node:
            return expand(root["$defs"][node["$ref"].rsplit("/", 1)[-1]])
        members = [m for key in ("anyOf", "oneOf", "allOf") for m in node.get(key, [])]
        return [node, *(n for m in members for n in expand(m))]

    nodes = expand(root)
    for part in path:
        nxt: list[Any] = []
        for node in nodes:
            props = node.get("properties", {})
            if isinstance(part, str) and part in props:
                nxt.append(props[part])
            elif isinstance(part, str) and isinstance(node.get("additionalProperties"), dict):
                nxt.append(node["additionalProperties"])
            elif isinstance(part, str) and node.get("patternProperties"):
                nxt.extend(node["patternProperties"].values())
            elif isinstance(part, int) and isinstance(node.get("items"), dict):
                nxt.append(node["items"])
        nodes = [n for x in nxt for n in expand(x)]
    return sorted({k for node in nodes for k in node.get("properties", {})})
