"""JSON Schema files generated from the models, so tools in any language can validate.

``lwfm-bus schemas`` writes them; a test regenerates them in memory and fails when
the committed files drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

from pydantic import TypeAdapter

from ._bus._bundle import BundleHeader, BundleTrailer
from ._events import event_adapter, event_classes
from ._federation import Federation
from ._pipeline import Pipeline
from ._query import DataPage, DataQuery
from ._sites._submit import CancelRequest, Submission
from ._triggers import trigger_adapter

__all__ = ["generate_schemas", "write_schemas"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _finish(schema: dict[str, Any], schema_id: str) -> dict[str, Any]:
    return {"$schema": _DIALECT, "$id": schema_id, **schema}


def generate_schemas() -> dict[str, dict[str, Any]]:
    """Relative path -> schema document, for every event type and file format."""
    out: dict[str, dict[str, Any]] = {}
    for cls in event_classes():
        type_name = get_args(cls.model_fields["type"].annotation)[0]
        name = f"events/{type_name}.json"
        out[name] = _finish(cls.model_json_schema(mode="validation"), name)
    out["events/any.json"] = _finish(event_adapter().json_schema(mode="validation"), "events/any.json")
    for name, adapter in _file_formats().items():
        out[name] = _finish(adapter.json_schema(mode="validation"), name)
    return out


def _file_formats() -> dict[str, TypeAdapter[Any]]:
    """User-written and exchanged formats (sites, triggers, pipelines, bundles, submissions)."""
    return {
        "files/trigger.json": trigger_adapter(),
        "files/data-query.json": TypeAdapter(DataQuery),
        "files/data-page.json": TypeAdapter(DataPage),
        "files/bundle-header.json": TypeAdapter(BundleHeader),
        "files/bundle-trailer.json": TypeAdapter(BundleTrailer),
        "files/federation.json": TypeAdapter(Federation),
        "files/pipeline.json": TypeAdapter(Pipeline),
        # What site agents take from LWFM_SUBMIT: a tool in any language can submit or cancel.
        "wire/submission.json": TypeAdapter(Submission),
        "wire/cancel-request.json": TypeAdapter(CancelRequest),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write_schemas(root: Path) -> list[Path]:
    """Write every schema under ``root``, removing stale ones; return the paths written."""
    wanted = generate_schemas()
    written = []
    for rel, schema in wanted.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render(schema)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    for stale in root.rglob("*.json"):
        if stale.relative_to(root).as_posix() not in wanted:
            stale.unlink()
    return written
