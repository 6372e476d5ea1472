"""``lwfm-bus graph FILE``: draw a pipeline as a metro map, in SVG or Mermaid, optionally with live status.

Without ``--workflow`` it never connects: a map is drawn from the file alone, so it works
in CI or in an editor.  With ``--workflow W`` it reads W's job records from the index
(no trigger engine is started for that) and colours each station by its runs, which it
finds by job name (see :func:`lwfm_bus._pipeline.parse_job_name`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._client import connect
from .._config import BusConfig
from .._pipeline import metro_map, status_from_jobs, to_mermaid, to_svg
from ._print import add_set_option, load_or_report

__all__ = ["register"]

_SUFFIXES = {".svg": "svg", ".mmd": "mermaid", ".mermaid": "mermaid"}
# Mermaid's defaults (maxEdges, maxTextSize): a viewer refuses larger diagrams unless configured otherwise.
_MERMAID_MAX_EDGES, _MERMAID_MAX_TEXT = 500, 50_000


def register(sub: Any) -> None:
    p = sub.add_parser("graph", help="draw a pipeline as a metro map (SVG or Mermaid); --workflow adds live status")
    p.add_argument("file", type=Path, metavar="FILE", help="pipeline file (.yaml)")
    p.add_argument(
        "--format",
        choices=("svg", "mermaid"),
        help="output format (default: from the -o suffix: .mmd/.mermaid -> mermaid; otherwise svg)",
    )
    p.add_argument("-o", "--output", type=Path, metavar="OUT", help="write here instead of to standard output")
    add_set_option(p)
    p.add_argument("--workflow", metavar="W", help="colour the stations by the status of workflow W's jobs")
    p.set_defaults(func=graph)


async def graph(args: argparse.Namespace, config: BusConfig) -> int:
    pipeline = load_or_report(args.file, args.overrides)
    if pipeline is None:
        return 2
    m = metro_map(pipeline)
    status = None
    if args.workflow is not None:
        # Reading job records needs no trigger engine; starting one would also make this a writer.
        async with connect(config.model_copy(update={"engine": "off"}), name="lwfm-bus graph") as bus:
            records = await bus.jobs(workflow=args.workflow, limit=None)
        status = status_from_jobs(m, ((r.name, r.state) for r in records))
    fmt = args.format or (_SUFFIXES.get(args.output.suffix.lower(), "svg") if args.output is not None else "svg")
    text = to_mermaid(m, status) if fmt == "mermaid" else to_svg(m, status)
    if fmt == "mermaid":
        edges = len(m.links) + sum(len(s.submap.links) for s in m.walk() if s.submap is not None)
        if edges > _MERMAID_MAX_EDGES or len(text) > _MERMAID_MAX_TEXT:
            print(
                f"lwfm-bus: note: {edges} edges, {len(text)} characters: Mermaid viewers refuse more than "
                f"{_MERMAID_MAX_EDGES} edges or {_MERMAID_MAX_TEXT} characters unless configured to allow them; "
                "the SVG has no such limit",
                file=sys.stderr,
            )
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
