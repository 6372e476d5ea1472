"""Where the stations of a metro map go: a deterministic layered layout, no layout engine.

A step's column is its longest ``after`` path from a start step (a step waiting for data
starts one column in, leaving room for its terminus).  Within a column steps are placed
in file order, each on the row of the line it continues (or of its first predecessor)
when that row is free, else the next free one below; a nested pipeline's frame takes as
many rows as its sub-map and as much width as it needs, and its sub-map's rows line up
with the parent's.  An edge that skips columns runs along one row that is free in every
column it crosses, so a line never runs through a station; lines change rows only in
the gaps between columns, at 45 degrees for one row, like a real metro map.  Placing
rows top-down in file order does not minimise crossings, but it is predictable: the same
file always draws the same map, ordered the way its author wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from .._triggers import Eq, Glob
from ._graph import (
    CHAR_W,
    COL_W,
    GAP,
    PALETTE,
    ROW_H,
    Line,
    Link,
    MetroMap,
    Station,
    Terminus,
    badge,
    frame_title,
    runs,
)
from ._model import Pipeline, Step
from ._sources import OnData

__all__ = ["FRAME_PAD", "Layout", "metro_map"]

FRAME_PAD = 16  # a sub-map's frame around its columns
_FRAME_INSET = 8  # the frame stops short of its rows' edges, so neighbouring rows keep their labels


@dataclass
class _Node:
    """A cell of the grid: a step, a data terminus, or a waypoint of an edge that skips columns."""

    layer: int
    row: int
    height: int = 1
    width: int = COL_W
    frame: bool = False  # a nested pipeline: lines attach to its sides, not its centre


class Layout:
    """Places one pipeline's stations (and, recursively, its nested ones') on the grid."""

    def __init__(self, pipeline: Pipeline, prefix: str, first_line: int) -> None:
        self.p, self.prefix, self.next_line = pipeline, prefix, first_line
        self.taken: dict[int, set[int]] = {}
        self.succs: dict[str, list[str]] = {}

    def _place(self, layer: int, preferred: int, height: int = 1) -> int:
        taken = self.taken.setdefault(layer, set())
        row = preferred
        while any(r in taken for r in range(row, row + height)):
            row += 1
        taken.update(range(row, row + height))
        return row

    def _lane(self, layers: range, preferred: int) -> int:
        """The first row from ``preferred`` down that is free in every one of ``layers``: one straight run."""
        row = preferred
        while any(row in self.taken.get(layer, ()) for layer in layers):
            row += 1
        return row

    def build(self) -> tuple[MetroMap, int]:
        steps, order = self.p.steps, self.p.order()
        succs = self.succs = {name: [] for name in steps}
        for name, step in steps.items():
            for before in step.after:
                succs[before].append(name)
        # Lines, in dependency order so a step's predecessors already have theirs: a step goes on along the
        # line of its first predecessor that still ends its line (see the module docstring of _graph).
        line_of: dict[str, int] = {}
        continues: dict[str, str] = {}  # step -> the predecessor whose line it continues
        chains: list[list[str]] = []
        for name in order:
            ends = [b for b in steps[name].after if chains[line_of[b]][-1] == b]
            if ends:
                continues[name] = ends[0]
                line_of[name] = line_of[ends[0]]
            else:
                line_of[name] = len(chains)
                chains.append([])
            chains[line_of[name]].append(name)
        first, self.next_line = self.next_line, self.next_line + len(chains)
        layer: dict[str, int] = {}
        for name in order:
            step = steps[name]
            layer[name] = max([1 if step.on_data is not None else 0, *(layer[b] + 1 for b in step.after)])
        # Nested maps first: their size is the size of their frame here.
        subs: dict[str, MetroMap] = {}
        for name, step in steps.items():
            if step.pipeline is not None:
                try:
                    nested = self.p.nested(name)
                except KeyError:  # built in Python, not loaded: drawn as a plain station
                    continue
                subs[name], self.next_line = Layout(nested, f"{self.prefix}{name}/", self.next_line).build()
        nodes: dict[str, _Node] = {}
        termini: dict[str, _Node] = {}
        chains_via: dict[tuple[str, str], list[_Node]] = {}
        file_index = {name: i for i, name in enumerate(steps)}
        for name in sorted(steps, key=lambda n: (layer[n], file_index[n])):
            step, lay = steps[name], layer[name]
            after = step.after
            if not after:
                preferred = 0
            elif name in continues:  # along its line
                preferred = nodes[continues[name]].row
            elif len(after) == 1:  # a branch: beside its source, or below
                preferred = nodes[after[0]].row
            else:
                preferred = min(nodes[a].row for a in after)
            node = _Node(lay, 0)
            if name in subs:
                node.frame = True
                node.height = max(1, subs[name].height // ROW_H)
                title = frame_title(name, subs[name].name, badge(step))
                # Room for the caption (bold), a run count and the -/+ button; a long caption is cut instead.
                caption = min(int(len(title) * CHAR_W * 1.1) + 120, 3 * COL_W)
                node.width = max(subs[name].width + 2 * FRAME_PAD, caption)
            node.row = self._place(lay, preferred, node.height)
            nodes[name] = node
            for before in after:
                src = nodes[before]
                mids = range(src.layer + 1, lay)
                lane = self._lane(mids, src.row)
                chains_via[(before, name)] = [_Node(mid, self._place(mid, lane)) for mid in mids]
            if step.on_data is not None:
                termini[name] = _Node(lay - 1, self._place(lay - 1, node.row))
        return self._geometry(steps, chains, line_of, first, subs, nodes, termini, chains_via), self.next_line

    def _geometry(
        self,
        steps: dict[str, Step],
        chains: list[list[str]],
        line_of: dict[str, int],
        first: int,
        subs: dict[str, MetroMap],
        nodes: dict[str, _Node],
        termini: dict[str, _Node],
        via: dict[tuple[str, str], list[_Node]],
    ) -> MetroMap:
        layers = max(n.layer for n in nodes.values()) + 1
        col_w = [COL_W] * layers
        for n in nodes.values():
            col_w[n.layer] = max(col_w[n.layer], n.width)
        col_x = [sum(col_w[:i]) + GAP * i for i in range(layers)]
        rows = max(max(taken) for taken in self.taken.values() if taken) + 1

        def centre_y(n: _Node) -> int:
            return n.row * ROW_H + ROW_H // 2

        def in_x(n: _Node, waypoint: bool = False) -> int:
            return col_x[n.layer] if waypoint or n.frame else col_x[n.layer] + COL_W // 2

        def out_x(n: _Node, waypoint: bool = False) -> int:
            if waypoint:
                return col_x[n.layer] + col_w[n.layer]
            return col_x[n.layer] + n.width if n.frame else col_x[n.layer] + COL_W // 2

        def route(src: _Node, mids: list[_Node], dst: _Node) -> tuple[tuple[int, int], ...]:
            stops = [(src, False), *((m, True) for m in mids), (dst, False)]
            pts = [(out_x(src), centre_y(src))]
            for (a, _), (b, waypoint) in pairwise(stops):
                ya, yb = centre_y(a), centre_y(b)
                if ya != yb:
                    gap_start = col_x[a.layer] + col_w[a.layer]
                    d = min(abs(yb - ya), GAP - 10)
                    x0 = gap_start + (GAP - d) // 2
                    pts += [(x0, ya), (x0 + d, yb)]
                pts.append((in_x(b, waypoint), yb))
                if waypoint:
                    pts.append((out_x(b, True), yb))
            return tuple(p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1])

        prefix = self.prefix
        stations: list[Station] = []
        links: list[Link] = []
        for name, step in steps.items():
            n = nodes[name]
            n_preds, n_succs = len(step.after), len(self.succs[name])
            box, origin = None, (0, 0)
            if name in subs:
                top = n.row * ROW_H
                box = (col_x[n.layer], top + _FRAME_INSET, n.width, n.height * ROW_H - 2 * _FRAME_INSET)
                origin = (col_x[n.layer] + (n.width - subs[name].width) // 2, top)
            x = col_x[n.layer] + (n.width // 2 if name in subs else COL_W // 2)
            stations.append(
                Station(
                    path=prefix + name,
                    name=name,
                    description=step.description,
                    badge=badge(step),
                    line=first + line_of[name],
                    interchange=n_preds >= 2 or n_succs >= 2,
                    runs=runs(step),
                    x=x,
                    y=centre_y(n),
                    submap=subs.get(name),
                    box=box,
                    origin=origin,
                )
            )
            for before in step.after:
                # A branch or a continuation runs on the target's line; lines end at a join.
                line = first + (line_of[name] if n_preds == 1 else line_of[before])
                points = route(nodes[before], via[(before, name)], n)
                links.append(Link(prefix + before, prefix + name, "after", line, points))
        terms: list[Terminus] = []
        for name, t in termini.items():
            on_data = steps[name].on_data
            assert on_data is not None
            term = Terminus(prefix + name, _data_label(on_data), col_x[t.layer] + COL_W // 2, centre_y(t))
            terms.append(term)
            # Straight into the station from the gap: a feeder that turned onto the station's row would
            # lie on top of the line arriving there.
            dst = nodes[name]
            feeder = [(term.x, term.y), (col_x[t.layer] + col_w[t.layer] + 10, term.y), (in_x(dst), centre_y(dst))]
            points = tuple(feeder) if term.y != centre_y(dst) else (feeder[0], feeder[2])
            links.append(Link(term.key, prefix + name, "data", None, points))
        lines = tuple(
            Line(first + i, PALETTE[(first + i) % len(PALETTE)], tuple(prefix + s for s in chain))
            for i, chain in enumerate(chains)
        )
        width = col_x[-1] + col_w[-1]
        return MetroMap(
            self.p.name, self.p.description, tuple(stations), lines, tuple(links), tuple(terms), width, rows * ROW_H
        )


def _data_label(on_data: OnData) -> str:
    """``data: kind=chapter, size``: equality and glob conditions in full, other conditions by their key."""
    parts = []
    for key, pred in on_data.where.items():
        if isinstance(pred, Eq):
            parts.append(f"{key}={pred.value}")
        elif isinstance(pred, Glob):
            parts.append(f"{key}~{pred.pattern}")
        else:
            parts.append(key)
    return "data: " + ", ".join(parts)


def metro_map(pipeline: Pipeline) -> MetroMap:
    """Lay out ``pipeline`` (loaded by ``load_pipeline``, so nested files are resolved) as a metro map."""
    return Layout(pipeline, "", 0).build()[0]
