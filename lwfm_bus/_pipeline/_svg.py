"""A metro map as a standalone SVG 1.1 file: coloured lines, stations, interchanges, sub-maps, a legend.

Written by hand, not with a DOM library, so the output is byte-identical for the same
input and has no dependency.  Every piece of text from a pipeline file (names,
descriptions, data conditions) goes through :func:`_esc`, which also drops characters
XML cannot carry, so no file can inject markup or break the document.

Elements a viewer (or a test) can find: each step is a ``<g class="station"
data-step="PATH">`` (an interchange adds ``interchange``, a nested pipeline ``submap``,
and live status ``data-status``); a nested pipeline's content is ``<g class="submap-body"
id="submap-PATH">`` (with ``/`` written as ``.``), which the frame's -/+ button hides and
shows again (SMIL ``<set>``, no script: it works where the SVG is opened as a document,
and a static renderer simply shows the map expanded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ._graph import CHAR_W, COL_W, Line, Link, MetroMap, Station, Terminus, frame_title
from ._status import STATES, StateName, StationStatus, with_nested

__all__ = ["STATUS_COLOURS", "SVG_NS", "to_svg"]

SVG_NS = "http://www.w3.org/2000/svg"
STATUS_COLOURS: dict[StateName, str] = {
    "pending": "#cfd8dc",
    "running": "#ffd54f",
    "complete": "#66bb6a",
    "failed": "#e53935",
    "mixed": "#ff8a65",
}
_FONT = "Helvetica, Arial, sans-serif"
_INK, _MUTED, _FEEDER, _FRAME = "#212121", "#607d8b", "#78909c", "#90a4ae"
_MARGIN, _HEADER, _LEGEND_ROW = 24, 64, 20
_LINE_W = 8
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _esc(text: str) -> str:
    """Text or attribute content: markup characters escaped, characters XML forbids replaced."""
    text = _XML_BAD.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "\u2026"


def _id(prefix: str, path: str) -> str:
    # Step names are [A-Za-z0-9_-] and never contain '.', so this is a valid, unique XML id.
    return f"{prefix}-{path.replace('/', '.')}"


def _points(points: tuple[tuple[int, int], ...]) -> str:
    return " ".join(f"{x},{y}" for x, y in points)


def _drawn(m: MetroMap) -> set[int]:
    """The lines whose colour the map draws: on a link, or as a station's ring (an interchange is black)."""
    maps = [m, *(s.submap for s in m.walk() if s.submap is not None)]
    used = {link.line for mm in maps for link in mm.links if link.line is not None}
    return used | {s.line for mm in maps for s in mm.stations if s.submap is None and not s.interchange}


def to_svg(m: MetroMap, status: Mapping[str, StationStatus] | None = None) -> str:
    """The map as an SVG document; with ``status`` (by step path), stations are coloured and counted.

    The legend lists the lines drawn, and only those.
    """
    st = with_nested(m, status) if status is not None else None
    drawn = _drawn(m)
    lines = [line for line in m.all_lines() if line.index in drawn]
    legend_w = max((len(_line_text(line)) for line in lines), default=0) * CHAR_W + 60
    title = _fit(m.name, 80)
    desc = _fit(m.description or "", 140)
    width = int(max(m.width + 2 * _MARGIN, legend_w + 2 * _MARGIN, len(desc) * CHAR_W + 2 * _MARGIN, 480))
    legend_rows = 1 + len(lines) + (1 if st is not None else 0)
    height = _HEADER + m.height + _MARGIN + legend_rows * _LEGEND_ROW + _MARGIN
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="{SVG_NS}" version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="{_FONT}" font-size="12" class="metro-map" data-pipeline="{_esc(m.name)}">',
        f"<title>{_esc(m.name)}</title>",
    ]
    if m.description:
        out.append(f"<desc>{_esc(m.description)}</desc>")
    out += [
        f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_MARGIN}" y="30" font-size="18" font-weight="bold" fill="{_INK}">{_esc(title)}</text>',
        f'<text x="{_MARGIN}" y="50" fill="{_MUTED}">{_esc(desc)}</text>',
        f'<g class="map" transform="translate({_MARGIN},{_HEADER})">',
    ]
    _draw_map(m, st, out)
    out.append("</g>")
    _legend(lines, st is not None, _HEADER + m.height + _MARGIN, out)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _draw_map(m: MetroMap, st: Mapping[str, StationStatus] | None, out: list[str]) -> None:
    colours = {line.index: line.colour for line in m.lines}
    for link in m.links:  # lines first: stations are drawn over them
        out.append(_link(link, colours))
    for term in m.termini:
        out.append(_terminus(term))
    for station in m.stations:
        if station.submap is not None:
            _frame(station, st, out)
        else:
            out.append(_station(station, colours[station.line], st))


def _link(link: Link, colours: Mapping[int, str]) -> str:
    pts = _points(link.points)
    attrs = f'class="link {link.kind}" data-from="{_esc(link.source)}" data-to="{_esc(link.target)}" fill="none"'
    if link.line is None:
        return f'<polyline {attrs} points="{pts}" stroke="{_FEEDER}" stroke-width="3" stroke-dasharray="6 5"/>'
    colour = colours[link.line]
    join = 'stroke-linejoin="round" stroke-linecap="round"'
    return f'<polyline {attrs} points="{pts}" stroke="{colour}" stroke-width="{_LINE_W}" {join}/>'


def _terminus(t: Terminus) -> str:
    return (
        f'<g class="terminus" data-step="{_esc(t.target)}"><title>{_esc(t.label)}</title>'
        f'<rect x="{t.x - 4}" y="{t.y - 12}" width="8" height="24" rx="2" fill="{_FEEDER}"/>'
        f'<text x="{t.x}" y="{t.y + 28}" text-anchor="middle" font-size="11" fill="{_MUTED}">'
        f"{_esc(_fit(t.label, 22))}</text></g>"
    )


def _status_parts(path: str, st: Mapping[str, StationStatus] | None) -> tuple[str, str | None, str | None]:
    """(extra attributes, fill colour, count badge) of a station under ``st``."""
    s = st.get(path) if st is not None else None
    state = s.state if s is not None else None
    if s is None or state is None:
        return "", None, None
    return f' data-status="{state}"', STATUS_COLOURS[state], s.badge


def _tooltip(station: Station) -> str:
    text = station.path + (f" ({station.badge})" if station.badge else "")
    return f"<title>{_esc(text + (': ' + station.description if station.description else ''))}</title>"


def _station(s: Station, colour: str, st: Mapping[str, StationStatus] | None) -> str:
    extra, fill, count = _status_parts(s.path, st)
    classes = "station interchange" if s.interchange else "station"
    parts = [f'<g class="{classes}" id="{_id("station", s.path)}" data-step="{_esc(s.path)}"{extra}>', _tooltip(s)]
    if s.interchange:  # like a real map: a white pill with a heavy black border where lines meet
        parts.append(
            f'<rect class="marker" x="{s.x - 13}" y="{s.y - 11}" width="26" height="22" rx="8" '
            f'fill="{fill or "#ffffff"}" stroke="{_INK}" stroke-width="4"/>'
        )
    else:
        parts.append(
            f'<circle class="marker" cx="{s.x}" cy="{s.y}" r="9" fill="{fill or "#ffffff"}" '
            f'stroke="{colour}" stroke-width="4"/>'
        )
    if s.badge:
        parts.append(
            f'<text class="badge" x="{s.x}" y="{s.y - 19}" text-anchor="middle" font-size="10" '
            f'fill="{_MUTED}">{_esc(s.badge)}</text>'
        )
    parts.append(
        f'<text class="label" x="{s.x}" y="{s.y + 28}" text-anchor="middle" fill="{_INK}">'
        f"{_esc(_fit(s.name, int((COL_W - 8) / CHAR_W)))}</text>"
    )
    if count is not None:
        parts.append(_count_badge(s.x + 16, s.y - 8, count))
    parts.append("</g>")
    return "".join(parts)


def _count_width(text: str) -> int:
    return len(text) * 6 + 8


def _count_badge(x: int, y: int, text: str) -> str:
    w = _count_width(text)
    return (
        f'<g class="count"><rect x="{x}" y="{y - 8}" width="{w}" height="15" rx="7" fill="{_INK}"/>'
        f'<text x="{x + w // 2}" y="{y + 3}" text-anchor="middle" font-size="10" fill="#ffffff">'
        f"{_esc(text)}</text></g>"
    )


def _frame(s: Station, st: Mapping[str, StationStatus] | None, out: list[str]) -> None:
    """A nested pipeline: its sub-map inside a frame, with ports where the parent's lines attach."""
    assert s.submap is not None and s.box is not None
    sub, (bx, by, bw, bh), (ox, oy) = s.submap, s.box, s.origin
    extra, fill, count = _status_parts(s.path, st)
    # SMIL reads '-' and '.' in a begin="ID.click" as syntax, and step names may contain '-': hex is safe.
    body, key = _id("submap", s.path), s.path.encode().hex()
    hide, show = f"hide{key}", f"show{key}"
    out += [
        f'<g class="station submap" id="{_id("station", s.path)}" data-step="{_esc(s.path)}"{extra}>',
        _tooltip(s),
        f'<rect class="frame" x="{bx}" y="{by}" width="{bw}" height="{bh}" rx="12" fill="#f5f7f8" '
        f'stroke="{fill or _FRAME}" stroke-width="{3 if fill else 2}" stroke-dasharray="8 4"/>',
        f'<g class="submap-body" id="{body}" transform="translate({ox},{oy})">',
        f'<set attributeName="display" to="none" begin="{hide}.click"/>',
        f'<set attributeName="display" to="inline" begin="{show}.click"/>',
    ]
    port_y = s.y - oy
    targets = {link.target for link in sub.links}
    sources = {link.source for link in sub.links if link.kind == "after"}
    for inner in sub.stations:  # thin transfers from the ports to where the sub-map starts and ends
        left = right = inner.x
        if inner.box is not None:
            left, right = inner.box[0], inner.box[0] + inner.box[2]
        ends = []
        if inner.path not in targets:
            ends.append((bx - ox, left))
        if inner.path not in sources:
            ends.append((bx + bw - ox, right))
        for port_x, x in ends:
            out.append(
                f'<polyline class="transfer" points="{port_x},{port_y} {x},{inner.y}" fill="none" '
                f'stroke="{_FRAME}" stroke-width="2" stroke-dasharray="3 3"/>'
            )
    _draw_map(sub, st, out)
    out.append("</g>")
    room = bw - 60 - (_count_width(count) + 8 if count is not None else 0)  # the -/+ button, the count
    title = _fit(frame_title(s.name, sub.name, s.badge), max(8, int(room / (CHAR_W * 1.1))))
    tw = int(len(title) * CHAR_W * 1.1 + 12)  # bold
    out += [
        f'<rect x="{bx + 10}" y="{by - 8}" width="{tw}" height="16" rx="4" fill="{fill or "#ffffff"}" '
        f'stroke="{_FRAME}"/>',
        f'<text class="label" x="{bx + 16}" y="{by + 4}" font-weight="bold" fill="{_INK}">{_esc(title)}</text>',
    ]
    for x in (bx, bx + bw):  # ports
        out.append(f'<circle cx="{x}" cy="{s.y}" r="6" fill="#ffffff" stroke="{_INK}" stroke-width="3"/>')
    if count is not None:
        out.append(_count_badge(bx + tw + 14, by, count))
    # The collapse / expand buttons: each click shows one and hides the other (the latest <set> wins).
    for button, glyph, shown in ((hide, "\u2212", True), (show, "+", False)):
        display = "" if shown else ' display="none"'
        first, second = ("none", "inline") if shown else ("inline", "none")
        out.append(
            f'<g class="toggle" id="{button}"{display} cursor="pointer">'
            f'<set attributeName="display" to="{first}" begin="{hide}.click"/>'
            f'<set attributeName="display" to="{second}" begin="{show}.click"/>'
            f'<rect x="{bx + bw - 26}" y="{by - 8}" width="16" height="16" rx="3" fill="#ffffff" stroke="{_FRAME}"/>'
            f'<text x="{bx + bw - 18}" y="{by + 4}" text-anchor="middle" font-weight="bold" fill="{_INK}">'
            f"{glyph}</text></g>"
        )
    out.append("</g>")


def _line_text(line: Line) -> str:
    ends = line.stations[0] if len(line.stations) == 1 else f"{line.stations[0]} \u2192 {line.stations[-1]}"
    return f"Line {line.index + 1}: {ends} ({len(line.stations)} station{'s' if len(line.stations) != 1 else ''})"


def _legend(lines: list[Line], with_status: bool, top: int, out: list[str]) -> None:
    y = top + 4
    out.append(f'<g class="legend" transform="translate({_MARGIN},{y})">')
    key = (
        f'<circle cx="8" cy="0" r="6" fill="#ffffff" stroke="{_INK}" stroke-width="3"/>'
        f'<text x="20" y="4" fill="{_MUTED}">station</text>'
        f'<rect x="80" y="-8" width="20" height="16" rx="6" fill="#ffffff" stroke="{_INK}" stroke-width="3"/>'
        f'<text x="108" y="4" fill="{_MUTED}">interchange (lines join or part)</text>'
        f'<line x1="310" y1="0" x2="340" y2="0" stroke="{_FEEDER}" stroke-width="3" stroke-dasharray="6 5"/>'
        f'<text x="348" y="4" fill="{_MUTED}">waits for data</text>'
    )
    out.append(key)
    for i, line in enumerate(lines):
        ly = (i + 1) * _LEGEND_ROW
        out.append(
            f'<g class="legend-line" data-line="{line.index}">'
            f'<line x1="0" y1="{ly}" x2="24" y2="{ly}" stroke="{line.colour}" stroke-width="{_LINE_W}" '
            f'stroke-linecap="round"/><text x="34" y="{ly + 4}" fill="{_INK}">{_esc(_line_text(line))}</text></g>'
        )
    if with_status:
        ly = (len(lines) + 1) * _LEGEND_ROW
        x = 0
        for state in STATES:
            out.append(
                f'<circle cx="{x + 8}" cy="{ly}" r="6" fill="{STATUS_COLOURS[state]}" stroke="{_INK}"/>'
                f'<text x="{x + 20}" y="{ly + 4}" fill="{_INK}">{state}</text>'
            )
            x += 90
    out.append("</g>")
