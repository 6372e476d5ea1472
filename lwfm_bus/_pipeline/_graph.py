"""A pipeline drawn as a metro map: the layout model that the SVG and Mermaid renderers share.

People who do not program read a pipeline best as a transit map: a chain of steps is a
*line*, a step is a *station*, a join (or a fork) is an *interchange* where lines meet,
a data-flow dependency is a dashed *feeder* from a "data" terminus, and a nested
pipeline is a framed *sub-map* that a viewer can collapse.

Lines: a step continues the line of its first predecessor whose line still ends there --
so at a fork the first branch (in file order) goes on along the line and every other
branch starts a line of its own, and at a join the line of the first branch goes on;
a step with no such predecessor starts a new line.  A fork/join pipeline thus reads as
one line with branches, not as one line per step.  Line numbers run on through nested
maps, so no two lines share a colour until the palette wraps.

This module holds the model (what is drawn, in whole pixels) and the job-name convention
that live status is read from; :mod:`._layout` places the stations (:func:`metro_map`), :mod:`._status`
counts runs, and :mod:`._svg` and :mod:`._mermaid` draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ._model import Step
from ._names import JobName, parse_job_name, step_path_of

__all__ = [
    "CHAR_W",
    "COL_W",
    "GAP",
    "PALETTE",
    "ROW_H",
    "JobName",
    "Line",
    "Link",
    "MetroMap",
    "Station",
    "Terminus",
    "badge",
    "frame_title",
    "parse_job_name",
    "runs",
    "step_path_of",
]

PALETTE = (
    "#e32017",
    "#0098d4",
    "#00782a",
    "#ee7c0e",
    "#9b0056",
    "#003688",
    "#b36305",
    "#6950a1",
    "#00a4a7",
    "#84b817",
    "#e86a9a",
    "#c99700",
)
"""Line colours, after the London Underground's: distinct from each other and readable on white."""

COL_W = 140  # a column of stations: room for a label of about 20 characters
GAP = 90  # between columns, where a line changes rows: one row down in 80 px stays at 45 degrees
ROW_H = 80
CHAR_W = 6.6  # about the width of one character at 11-12 px: enough to size labels without a font


@dataclass(frozen=True)
class Line:
    """A chain of steps drawn in one colour; ``stations`` are step paths in running order."""

    index: int
    colour: str
    stations: tuple[str, ...]


@dataclass(frozen=True)
class Station:
    """One step.  ``path`` is unique in the whole map tree: ``"count/count"`` is step ``count`` of the
    pipeline nested in step ``count``.  A nested step carries its ``submap``, drawn inside ``box``
    (x, y, width, height) with the sub-map's own corner at ``origin``; lines attach to the box's sides."""

    path: str
    name: str
    description: str | None
    badge: str
    line: int
    interchange: bool
    runs: int | None
    x: int
    y: int
    submap: MetroMap | None = None
    box: tuple[int, int, int, int] | None = None
    origin: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Terminus:
    """Where a data-flow dependency comes from: the data matching ``label``, feeding step ``target``."""

    target: str
    label: str
    x: int
    y: int

    @property
    def key(self) -> str:
        return f"{self.target}#data"


@dataclass(frozen=True)
class Link:
    """A dependency drawn as a polyline: ``after`` on a line's colour, ``data`` as a dashed feeder."""

    source: str  # a step path, or a Terminus.key
    target: str
    kind: Literal["after", "data"]
    line: int | None
    points: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class MetroMap:
    """The whole drawing of one pipeline (and, through its stations, of every nested one)."""

    name: str
    description: str | None
    stations: tuple[Station, ...]
    lines: tuple[Line, ...]
    links: tuple[Link, ...]
    termini: tuple[Terminus, ...]
    width: int
    height: int

    def walk(self) -> Iterator[Station]:
        """Every station, nested ones right after the station that holds them."""
        for station in self.stations:
            yield station
            if station.submap is not None:
                yield from station.submap.walk()

    def all_lines(self) -> Iterator[Line]:
        """This map's lines, then each sub-map's (the order of their numbers)."""
        yield from self.lines
        for station in self.stations:
            if station.submap is not None:
                yield from station.submap.all_lines()


def badge(step: Step) -> str:
    """How a step runs, in a few characters: ``x4``, ``each``, ``3x2``, ``on data``, ``seq 3``, ``until <=20``.

    A product shows its shape, the size of each of its sources (``?`` where only running it tells).
    """
    fan = {"once": "", "parallel": f"x{step.parallel}", "for_each": "each", "on_data": "on data"}
    if step.product is not None:
        fan["product"] = "x".join(str(source.size() or "?") for source in step.product.values())
    parts = [fan[step.fan_out]]
    if step.sequence is not None:
        parts.append(f"seq {step.sequence}")
    if step.until is not None:
        parts.append(f"until <={step.max_iterations}")
    return ", ".join(p for p in parts if p)


def frame_title(name: str, pipeline: str, how: str) -> str:
    """The caption of a nested pipeline's frame: ``count: count-words-in``."""
    return f"{name}: {pipeline}" + (f" ({how})" if how else "")


def runs(step: Step) -> int | None:
    """How many runs (jobs) a step makes, when the file says so; None when only running it tells."""
    if step.pipeline is not None or step.until is not None or step.fan_out == "on_data":
        return None
    count: int | None = 1
    if step.parallel is not None:
        count = step.parallel
    elif step.for_each is not None:
        count = step.for_each.size()
    elif step.product is not None:
        sizes = [source.size() for source in step.product.values()]
        count = None if None in sizes else math.prod(s for s in sizes if s is not None)
    if count is not None and step.sequence is not None:
        count *= step.sequence
    return count
