"""A metro map as a Mermaid flowchart, for the places that render Mermaid (issue trackers, wikis, docs).

Mermaid lays the graph out itself, so only the map's *meaning* carries over: one node per
station (a stadium; an interchange is a rounded box with a heavy border), an edge per
dependency coloured by its line (``linkStyle``), a dashed edge from a data terminus, a
``subgraph`` per nested pipeline (which viewers that support it can collapse), and a
``classDef`` per live status.

Node ids are generated (``s3_clean_data``): a step name may contain ``-`` or be a Mermaid
keyword such as ``end``, and labels are quoted with every character outside a small safe
set written as a Mermaid entity (``#60;``), so no step name, label or data condition can
change the diagram's structure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from ._graph import MetroMap, Station, frame_title
from ._status import STATES, StationStatus, with_nested
from ._svg import STATUS_COLOURS

__all__ = ["to_mermaid"]

_SAFE = re.compile(r"[A-Za-z0-9 _\-.,:/()+=~^@]")
_FEEDER = "#78909c"


def _text(text: str) -> str:
    """Label text with everything that could mean something to Mermaid (quotes, markup, ``#``) as an entity."""
    return "".join(c if _SAFE.fullmatch(c) else f"#{ord(c)};" for c in text)


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", path)


def to_mermaid(m: MetroMap, status: Mapping[str, StationStatus] | None = None) -> str:
    """``flowchart LR`` source for the map; with ``status`` (by step path), stations are classed by state."""
    st = with_nested(m, status) if status is not None else None
    ids: dict[str, str] = {}
    for i, station in enumerate(m.walk()):
        ids[station.path] = f"{'m' if station.submap is not None else 's'}{i}_{_slug(station.path)}"
    maps = [m, *(s.submap for s in m.walk() if s.submap is not None)]
    for i, term in enumerate(t for mm in maps for t in mm.termini):
        ids[term.key] = f"d{i}_{_slug(term.target)}"
    out = ["---", f"title: {json.dumps(m.name)}", "---", "flowchart LR"]
    classes: dict[str, list[str]] = {}

    def emit(mm: MetroMap, indent: str) -> None:
        colours = {line.index: line for line in mm.lines}
        for term in mm.termini:
            out.append(f'{indent}{ids[term.key]}[/"{_text(term.label)}"/]')
            classes.setdefault("data", []).append(ids[term.key])
        for s in mm.stations:
            state = _state(s, st)
            if state is not None:
                classes.setdefault(state[0], []).append(ids[s.path])
            if s.submap is not None:
                caption = frame_title(s.name, s.submap.name, s.badge) + (f" {state[1]}" if state else "")
                out.append(f'{indent}subgraph {ids[s.path]} ["{_text(caption)}"]')
                out.append(f"{indent}  direction LR")
                emit(s.submap, indent + "  ")
                out.append(f"{indent}end")
                classes.setdefault("submap", []).append(ids[s.path])
                continue
            label = "<br>".join(_text(part) for part in (s.name, s.badge, state[1] if state else "") if part)
            shape = ("(", ")") if s.interchange else ("([", "])")
            out.append(f'{indent}{ids[s.path]}{shape[0]}"{label}"{shape[1]}')
            kind = "interchange" if s.interchange else f"line{colours[s.line].index}"
            classes.setdefault(kind, []).append(ids[s.path])

    emit(m, "  ")
    # Edges after every node, so each node belongs to the subgraph where it was declared.
    styles: dict[str, list[int]] = {}
    line_colour = {line.index: line.colour for line in m.all_lines()}
    links = [link for mm in maps for link in mm.links]
    for i, link in enumerate(links):
        arrow = "-.->" if link.kind == "data" else "==>"
        out.append(f"  {ids[link.source]} {arrow} {ids[link.target]}")
        colour = _FEEDER if link.line is None else line_colour[link.line]
        styles.setdefault(colour, []).append(i)
    for colour, indices in styles.items():
        width = "2px" if colour == _FEEDER else "5px"
        out.append(f"  linkStyle {','.join(map(str, indices))} stroke:{colour},stroke-width:{width}")
    for line in m.all_lines():
        out.append(f"  classDef line{line.index} fill:#ffffff,stroke:{line.colour},stroke-width:3px")
    out += [
        "  classDef interchange fill:#ffffff,stroke:#212121,stroke-width:4px",
        f"  classDef data fill:#eceff1,stroke:{_FEEDER},stroke-dasharray:4 3",
        "  classDef submap fill:#f5f7f8,stroke:#90a4ae,stroke-dasharray:8 4",
    ]
    # Status classes come last: among equally specific rules the later one wins, so the fill is the status's.
    for state in STATES:
        out.append(f"  classDef {state} fill:{STATUS_COLOURS[state]}")
    for name, members in classes.items():
        out.append(f"  class {','.join(members)} {name}")
    return "\n".join(out) + "\n"


def _state(s: Station, st: Mapping[str, StationStatus] | None) -> tuple[str, str] | None:
    status = st.get(s.path) if st is not None else None
    state = status.state if status is not None else None
    return None if status is None or state is None else (state, status.badge)
