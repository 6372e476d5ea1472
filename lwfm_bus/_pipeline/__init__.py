"""Declarative pipelines: the file format, its validation and the typed model a runner compiles.

Private to lwfm_bus; the rest of the package imports from here.  Modules:
``_model`` (Pipeline, Step), ``_sources`` (for_each / until / on_data forms),
``_types`` (field types), ``_check`` (cross-step checks), ``_template`` (``{name}`` placeholders), ``_expr``
(the safe loop-condition language), ``_yaml`` (YAML with positions) and ``_load``
(files, nesting, errors with file:line:column); ``_graph`` (a pipeline as a metro map, and
the job names live status is read from), ``_layout``, ``_status``, ``_svg`` and ``_mermaid``.

The names are resolved on first use (PEP 562, as in ``lwfm_bus/__init__``): a job's
``lwfm-bus step-exec`` imports ``_stepexec``, which lives here, and would otherwise pay
for the YAML loader, the model and the metro maps every time (issue #21).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._expr import FUNCTIONS, Expr, ExprError, compile_expr
    from ._graph import JobName, MetroMap, Station, parse_job_name, step_path_of
    from ._layout import metro_map
    from ._load import MAX_FILE_BYTES, MAX_NESTING, load_pipeline, parse_override
    from ._mermaid import to_mermaid
    from ._model import FORMAT_VERSION, InputDecl, Pipeline, Step
    from ._sources import (
        MAX_RUNS,
        QUERY_ITEM_FIELDS,
        UNTIL_NAMES,
        DataMatch,
        GlobSource,
        ListSource,
        OnData,
        QuerySource,
        Source,
        Until,
        UntilExitCode,
        UntilExpr,
        UntilFile,
        UntilMetadata,
    )
    from ._status import StationStatus, status_from_jobs
    from ._svg import to_svg
    from ._template import Template, TemplateError
    from ._types import MAX_ITERATIONS, MAX_STEPS

__all__ = [
    "FORMAT_VERSION",
    "FUNCTIONS",
    "MAX_FILE_BYTES",
    "MAX_ITERATIONS",
    "MAX_NESTING",
    "MAX_RUNS",
    "MAX_STEPS",
    "QUERY_ITEM_FIELDS",
    "UNTIL_NAMES",
    "DataMatch",
    "Expr",
    "ExprError",
    "GlobSource",
    "InputDecl",
    "JobName",
    "ListSource",
    "MetroMap",
    "OnData",
    "Pipeline",
    "QuerySource",
    "Source",
    "Station",
    "StationStatus",
    "Step",
    "Template",
    "TemplateError",
    "Until",
    "UntilExitCode",
    "UntilExpr",
    "UntilFile",
    "UntilMetadata",
    "compile_expr",
    "load_pipeline",
    "metro_map",
    "parse_job_name",
    "parse_override",
    "status_from_jobs",
    "step_path_of",
    "to_mermaid",
    "to_svg",
]

# Where each name lives, relative to this package (a test keeps this and the block above in step).
_EXPORTS: dict[str, tuple[str, ...]] = {
    ".._expr": ("FUNCTIONS", "Expr", "ExprError", "compile_expr"),
    "._graph": ("JobName", "MetroMap", "Station", "parse_job_name", "step_path_of"),
    "._layout": ("metro_map",),
    "._load": ("MAX_FILE_BYTES", "MAX_NESTING", "load_pipeline", "parse_override"),
    "._mermaid": ("to_mermaid",),
    "._model": ("FORMAT_VERSION", "InputDecl", "Pipeline", "Step"),
    "._sources": (
        "MAX_RUNS",
        "QUERY_ITEM_FIELDS",
        "UNTIL_NAMES",
        "DataMatch",
        "GlobSource",
        "ListSource",
        "OnData",
        "QuerySource",
        "Source",
        "Until",
        "UntilExitCode",
        "UntilExpr",
        "UntilFile",
        "UntilMetadata",
    ),
    "._status": ("StationStatus", "status_from_jobs"),
    "._svg": ("to_svg",),
    "._template": ("Template", "TemplateError"),
    "._types": ("MAX_ITERATIONS", "MAX_STEPS"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

if not TYPE_CHECKING:  # hidden from type checkers: they would read every unknown name as Any

    def __getattr__(name: str) -> Any:
        """Import a name's module on first use, and keep the name here for the next."""
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
