"""``lwfm-bus graph``: a fork/join reads as lines with branches, the legend names only what is drawn, and a
product's badge says its shape (issue 17, item 9)."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from lwfm_bus._pipeline import load_pipeline, metro_map, to_svg
from lwfm_bus._pipeline._svg import SVG_NS

ROOT = Path(__file__).resolve().parents[2]
NS = {"svg": SVG_NS}

FORK_JOIN = """
    pipeline: 1
    name: fork-join
    steps:
      a: {run: echo a}
      b: {after: a, run: echo b}
      c: {after: a, run: echo c}
      d: {after: [b, c], run: echo d}
      e: {after: d, run: echo e}
"""

PRODUCT_OF_A_GLOB = """
    pipeline: 1
    name: shapes
    steps:
      fit:
        product:
          table: {glob: "data/*.csv"}
          order: {list: [1, 2]}
        run: echo {item.table} {item.order}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _svg(path: Path) -> ET.Element:
    return ET.fromstring(to_svg(metro_map(load_pipeline(path))).encode())


def _legend_colours(root: ET.Element) -> list[str]:
    legend = root.find(".//svg:g[@class='legend']", NS)
    assert legend is not None
    entries = legend.findall("svg:g[@class='legend-line']", NS)
    colours = [entry.find("svg:line", NS) for entry in entries]
    return [str(line.get("stroke")) for line in colours if line is not None]


def _path_colours(root: ET.Element) -> set[str]:
    """The colours of the lines' drawn paths (the dashed data feeders are not lines)."""
    return {
        str(el.get("stroke"))
        for el in root.iter(f"{{{SVG_NS}}}polyline")
        if {"link", "after"} <= set(el.get("class", "").split())
    }


def test_a_fork_join_is_one_line_with_a_branch_and_the_legend_lists_what_is_drawn(tmp_path: Path) -> None:
    path = _write(tmp_path, FORK_JOIN)
    root = _svg(path)
    legend = _legend_colours(root)
    assert len(legend) == len(set(legend)), "one legend entry per line"
    assert set(legend) == _path_colours(root)
    m = metro_map(load_pipeline(path))
    assert [line.stations for line in m.all_lines()] == [("a", "b", "d", "e"), ("c",)]


def test_the_legend_of_every_example_lists_exactly_the_colours_drawn() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        root = _svg(path)
        rings = {
            str(circle.get("stroke"))
            for g in root.iter(f"{{{SVG_NS}}}g")
            if g.get("class") == "station"  # a plain station: its ring has its line's colour
            for circle in g.findall("svg:circle", NS)
        }
        assert set(_legend_colours(root)) == _path_colours(root) | rings, path.name


def test_a_products_badge_is_its_shape(tmp_path: Path) -> None:
    root = _svg(ROOT / "examples/05-product.yaml")
    station = root.find(".//svg:g[@data-step='sample']", NS)
    assert station is not None
    badge = station.find("svg:text[@class='badge']", NS)
    assert badge is not None and badge.text == "3x3"  # 3 sample sizes x 3 seeds
    m = metro_map(load_pipeline(_write(tmp_path, PRODUCT_OF_A_GLOB)))
    assert [s.badge for s in m.walk()] == ["?x2"]  # a glob's size is known only when the run starts
