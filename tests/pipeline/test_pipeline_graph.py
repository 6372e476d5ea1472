"""``lwfm-bus graph``: a pipeline drawn as a metro map.  The SVG parses as XML with one station per step, the
Mermaid parses with the real Mermaid parser (Node.js, ``tests/js``), status colours the right stations, job
names map to steps, and text from a pipeline file cannot inject markup."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from itertools import pairwise
from pathlib import Path

import pytest

import lwfm_bus as lb
from lwfm_bus import JobState
from lwfm_bus._cli import main
from lwfm_bus._cli._graph import graph
from lwfm_bus._cli._main import build_parser
from lwfm_bus._config import BusConfig
from lwfm_bus._pipeline import (
    JobName,
    MetroMap,
    Pipeline,
    Station,
    StationStatus,
    load_pipeline,
    metro_map,
    parse_job_name,
    status_from_jobs,
    step_path_of,
    to_mermaid,
    to_svg,
)
from lwfm_bus._pipeline._status import with_nested
from lwfm_bus._pipeline._svg import STATUS_COLOURS, SVG_NS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
JS = Path(__file__).resolve().parents[1] / "js"
NS = {"svg": SVG_NS}

RICH = {
    "main.yaml": """
        pipeline: 1
        name: rich-demo
        description: Fan out, join, a long edge, a data wait and a nested pipeline.
        steps:
          fetch: {run: echo fetch}
          clean: {after: fetch, run: echo clean, parallel: 4}
          index: {after: fetch, run: echo index}
          train: {after: [clean, index], run: echo train, until: {exit_code: 0}, max_iterations: 20}
          evaluate: {after: train, pipeline: sub/eval.yaml}
          late-data: {on_data: {where: {kind: chapter}}, run: echo late}
          report: {after: [evaluate, late-data, fetch], run: echo report}
        """,
    "sub/eval.yaml": """
        pipeline: 1
        name: eval-suite
        steps:
          prep: {run: echo prep}
          score-a: {after: prep, run: echo a, for_each: {list: [1, 2, 3]}}
          score-b: {after: prep, run: echo b, sequence: 3}
          merge: {after: [score-a, score-b], run: echo merge}
        """,
}

HOSTILE = {
    "main.yaml": r"""
        pipeline: 1
        name: "a:b@c"
        description: "</desc><script>alert(1)</script> & \"quotes\" \x01 #quot; `md` **bold**"
        steps:
          end:
            description: "</text><script>alert('x')</script>"
            run: echo end
          graph:
            after: end
            description: "]]> <![CDATA[ x ]]> &amp; <!-- c -->"
            on_data: {where: {kind: "<b>\"x\"</b> & #35; ]"}}
            run: echo graph
          subgraph-end_:
            after: [end, graph]
            run: echo sub
        """,
}


def write_tree(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return directory / "main.yaml"


def step_paths(p: Pipeline, prefix: str = "") -> list[str]:
    out = []
    for name, step in p.steps.items():
        out.append(prefix + name)
        if step.pipeline is not None:
            out += step_paths(p.nested(name), f"{prefix}{name}/")
    return out


def classes(el: ET.Element) -> set[str]:
    return set(el.get("class", "").split())


def stations(root: ET.Element) -> dict[str, ET.Element]:
    found = [el for el in root.iter(f"{{{SVG_NS}}}g") if "station" in classes(el)]
    by_path = {el.get("data-step", ""): el for el in found}
    assert len(by_path) == len(found), "one station element per step path"
    return by_path


def text_at(el: ET.Element, path: str) -> str | None:
    found = el.find(path, NS)
    assert found is not None, path
    return found.text


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text.encode())
    assert root.tag == f"{{{SVG_NS}}}svg" and root.get("version") == "1.1"
    return root


def mermaid_parse(diagrams: list[str]) -> list[dict[str, object]]:
    """Run the real Mermaid parser.  Missing Node.js or packages is a failure: CI installs both."""
    node = shutil.which("node")
    assert node is not None, "Node.js is needed to check the Mermaid output (CI installs it)"
    assert (JS / "node_modules" / "mermaid").is_dir(), "run: (cd tests/js && npm ci)  -- scripts/test.sh does"
    proc = subprocess.run(
        [node, str(JS / "mermaid-parse.mjs")],
        input=json.dumps(diagrams),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, object]] = json.loads(proc.stdout)
    assert len(results) == len(diagrams)
    return results


# --------------------------------------------------------------------------- SVG


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_draws_as_svg_with_one_station_per_step(path: Path) -> None:
    pipeline = load_pipeline(path)
    m = metro_map(pipeline)
    text = to_svg(m)
    assert text == to_svg(metro_map(load_pipeline(path))), "the same file draws byte-identically"
    root = parse_svg(text)
    found = stations(root)
    assert list(found) == step_paths(pipeline)
    for step_path, el in found.items():
        assert el.find("svg:title", NS) is not None, f"{step_path} has a tooltip"
        labels = [t.text for t in el.iter(f"{{{SVG_NS}}}text") if "label" in classes(t)]
        assert step_path.rsplit("/", 1)[-1] in labels
    legend = root.find(".//svg:g[@class='legend']", NS)
    assert legend is not None and len(legend.findall("svg:g[@class='legend-line']", NS)) == len(list(m.all_lines()))


def test_badges_say_how_each_step_runs() -> None:
    badges = {p.stem: {s.path: s.badge for s in metro_map(load_pipeline(p)).walk() if s.badge} for p in EXAMPLES}
    assert badges["02-parallel"] == {"sample": "x4"}
    assert badges["03-for-each"] == {"stats": "each"}
    assert badges["05-product"] == {"sample": "3x3"}  # the product of 3 sizes and 3 seeds
    assert badges["06-sequence"] == {"walk": "seq 10"}
    assert badges["07-for-each-sequence"] == {"walk": "each, seq 5"}
    assert badges["08-loop-until"] == {"solve": "until <=20"}
    root = parse_svg(to_svg(metro_map(load_pipeline(ROOT / "examples/08-loop-until.yaml"))))
    assert text_at(stations(root)["solve"], "svg:text[@class='badge']") == "until <=20"


def test_a_nested_pipeline_is_a_collapsible_sub_map() -> None:
    root = parse_svg(to_svg(metro_map(load_pipeline(ROOT / "examples/09-nested.yaml"))))
    frame = stations(root)["count"]
    assert {"station", "submap"} <= classes(frame)
    body = frame.find("svg:g[@id='submap-count']", NS)
    assert body is not None and "submap-body" in classes(body)
    inner = [el.get("data-step") for el in body.iter(f"{{{SVG_NS}}}g") if "station" in classes(el)]
    assert inner == ["count/count"]
    # The -/+ buttons hide and show the body with SMIL, naming elements that exist (in a syntax-safe way).
    ids = {el.get("id") for el in root.iter() if el.get("id")}
    begins = sorted(str(s.get("begin")) for s in body.findall("svg:set", NS))
    assert len(begins) == 2 and all(b.endswith(".click") for b in begins)
    targets = {b.removesuffix(".click") for b in begins}
    assert targets <= ids and all(re.fullmatch(r"[A-Za-z0-9_]+", t) for t in targets)
    assert {t.get("id") for t in frame.findall("svg:g[@class='toggle']", NS)} == targets


def test_layout_keeps_lines_straight_and_off_other_stations(tmp_path: Path) -> None:
    m = metro_map(load_pipeline(write_tree(tmp_path, RICH)))
    by_path = {s.path: s for s in m.walk()}
    lines = {line.index: line.stations for line in m.all_lines()}
    # A line goes on through a fork (along its first branch) and a join (the first branch's line); the other
    # branches start lines of their own.
    assert lines[by_path["train"].line] == ("fetch", "clean", "train", "evaluate", "report")
    assert lines[by_path["index"].line] == ("index",) and lines[by_path["late-data"].line] == ("late-data",)
    assert lines[by_path["evaluate/prep"].line] == ("evaluate/prep", "evaluate/score-a", "evaluate/merge")
    assert {p for p, s in by_path.items() if s.interchange} == {
        "fetch",
        "train",
        "report",
        "evaluate/prep",
        "evaluate/merge",
    }
    assert by_path["evaluate"].submap is not None and by_path["evaluate"].box is not None
    assert [t.target for t in m.termini] == ["late-data"]
    assert len({line.colour for line in m.all_lines()}) == len(lines), "no colour is reused before the palette wraps"
    # Columns follow the longest 'after' path; a step waiting for data leaves a column for its terminus.
    xs = {p: by_path[p].x for p in ("fetch", "clean", "train", "late-data")}
    assert xs["fetch"] < xs["clean"] == xs["late-data"] < xs["train"]
    assert by_path["clean"].y == by_path["fetch"].y, "a branch keeps its source's row when it is free"
    assert by_path["report"].x > by_path["evaluate"].box[0] + by_path["evaluate"].box[2]
    for mm in (m, by_path["evaluate"].submap):
        for link in mm.links:
            for s in mm.stations:
                if s.path not in (link.source, link.target) and s.box is None:
                    assert not _on_polyline((s.x, s.y), link.points), f"{link.source}->{link.target} crosses {s.path}"


def _on_polyline(p: tuple[int, int], points: tuple[tuple[int, int], ...]) -> bool:
    for (x1, y1), (x2, y2) in pairwise(points):
        cross = (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1)
        if cross == 0 and min(x1, x2) <= p[0] <= max(x1, x2) and min(y1, y2) <= p[1] <= max(y1, y2):
            return True
    return False


def test_status_colours_the_right_station_and_counts_its_runs() -> None:
    m = metro_map(load_pipeline(ROOT / "examples/02-parallel.yaml"))
    plain = stations(parse_svg(to_svg(m)))
    status = {"sample": StationStatus.of([JobState.COMPLETE] * 3 + [JobState.RUNNING], runs=4)}
    found = stations(parse_svg(to_svg(m, status)))
    assert found["sample"].get("data-status") == "running" and found["average"].get("data-status") is None
    marker = found["sample"].find("svg:circle[@class='marker']", NS)
    assert marker is not None and marker.get("fill") == STATUS_COLOURS["running"]
    before = plain["sample"].find("svg:circle[@class='marker']", NS)
    assert before is not None and before.get("fill") == "#ffffff"
    assert text_at(found["sample"], "svg:g[@class='count']/svg:text") == "3/4"
    untouched = found["average"].find("svg:circle[@class='marker']", NS)
    assert untouched is not None and untouched.get("fill") == "#ffffff"


def test_a_sub_map_frame_sums_its_stations() -> None:
    m = metro_map(load_pipeline(ROOT / "examples/09-nested.yaml"))
    found = stations(parse_svg(to_svg(m, {"count/count": StationStatus.of([JobState.FAILED], runs=1)})))
    assert found["count"].get("data-status") == "failed" and found["count/count"].get("data-status") == "failed"
    assert found["split"].get("data-status") is None


def test_svg_escapes_everything_a_pipeline_file_says(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_tree(tmp_path, HOSTILE))
    m = metro_map(pipeline)
    root = parse_svg(to_svg(m, {"end": StationStatus.of([JobState.COMPLETE])}))
    assert not [el for el in root.iter() if el.tag.rsplit("}", 1)[-1].lower() == "script"]
    allowed = ("svg", "title", "desc", "rect", "text", "g", "polyline", "circle", "line", "set")
    assert {el.tag for el in root.iter()} <= {f"{{{SVG_NS}}}{tag}" for tag in allowed}
    texts = "".join(root.itertext())
    assert "</text><script>alert('x')</script>" in texts, "shown as text, not as markup"
    assert '<b>"x"</b> & #35; ]' in texts
    assert "\ufffd" in texts, "a character XML cannot carry is replaced, not passed through"
    assert list(stations(root)) == ["end", "graph", "subgraph-end_"]


# --------------------------------------------------------------------------- Mermaid


def test_mermaid_output_parses_with_the_real_parser(tmp_path: Path) -> None:
    rich = load_pipeline(write_tree(tmp_path / "rich", RICH))
    hostile = load_pipeline(write_tree(tmp_path / "hostile", HOSTILE))
    diagrams = [to_mermaid(metro_map(load_pipeline(p))) for p in EXAMPLES]
    m = metro_map(rich)
    states = [JobState.COMPLETE, JobState.RUNNING, JobState.FAILED]
    diagrams += [
        to_mermaid(m),
        to_mermaid(m, {s.path: StationStatus.of(states[: i % 3 + 1]) for i, s in enumerate(m.walk())}),
        to_mermaid(metro_map(hostile), {"graph": StationStatus.of([JobState.PENDING])}),
    ]
    broken = "flowchart LR\n  a ==> \n  subgraph x\n"
    results = mermaid_parse([*diagrams, broken])
    for text, result in zip(diagrams, results, strict=False):
        assert result == {"ok": True, "type": "flowchart-v2"}, (result, text)
    assert results[-1]["ok"] is False and "Parse error" in str(results[-1]["error"]), "the check can fail"


def test_mermaid_has_one_node_per_station_and_a_subgraph_per_nested_pipeline(tmp_path: Path) -> None:
    text = to_mermaid(metro_map(load_pipeline(ROOT / "examples/09-nested.yaml")))
    assert text.startswith('---\ntitle: "book-report"\n---\nflowchart LR\n')
    sub = '  subgraph m1_count ["count: count-words-in"]\n    direction LR\n    s2_count_count(["count"])\n  end\n'
    assert sub in text
    assert "  s0_split ==> m1_count\n  m1_count ==> s3_report\n  linkStyle 0,1 stroke:#e32017" in text
    hostile = to_mermaid(metro_map(load_pipeline(write_tree(tmp_path, HOSTILE))))
    assert "s0_end(" in hostile and "s1_graph(" in hostile and "s2_subgraph_end_(" in hostile
    assert "<b>" not in hostile and "#60;b#62;#34;x#34;#60;/b#62; #38; #35;35#59; #93;" in hostile
    assert "-.->" in hostile, "a data feeder is a dashed edge"


# --------------------------------------------------------------------------- job names and status


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("book-report:split", JobName("book-report", "split", None, None)),
        ("book-report:count/count", JobName("book-report", "count/count", None, None)),
        ("pi-convergence:sample[3]", JobName("pi-convergence", "sample", "3", None)),
        ("newton-sqrt:solve@2", JobName("newton-sqrt", "solve", None, 2)),
        ("per-input:clean[2]@1", JobName("per-input", "clean", "2", 1)),
        ("walkers:walk[grace]@4", JobName("walkers", "walk", "grace", 4)),
        ("a:b@c:x/y[k:v]@0", JobName("a:b@c", "x/y", "k:v", 0)),
        ("no-colon", None),
        ("p:", None),
        ("p:9step", None),
        ("p:a/", None),
        ("p:a[]", None),
        ("p:a@01", None),
        ("p:a@x", None),
        ("p:a b", None),
        ("", None),
        (None, None),
    ],
)
def test_job_names_parse(name: str | None, parsed: JobName | None) -> None:
    assert parse_job_name(name) == parsed


def test_step_path_of_ignores_other_pipelines() -> None:
    assert step_path_of("book-report:count/count[2]@1") == "count/count"
    assert step_path_of("book-report:count/count[2]@1", "book-report") == "count/count"
    assert step_path_of("book-reports:split", "book-report") is None
    assert step_path_of("a:b:c", "a") is None, "pipeline a never claims a job of pipeline a:b"
    assert step_path_of("a:b:c", "a:b") == "c"
    assert step_path_of(None, "a") is None


def test_status_from_jobs_counts_runs_per_station() -> None:
    m = metro_map(load_pipeline(ROOT / "examples/09-nested.yaml"))
    jobs: list[tuple[str | None, JobState]] = [
        ("book-report:split", JobState.COMPLETE),
        ("book-report:count/count[0]", JobState.COMPLETE),
        ("book-report:count/count[1]", JobState.RUNNING),
        ("count-words-in:count", JobState.FAILED),  # another pipeline's name
        ("book-report:nosuchstep", JobState.FAILED),
        ("book-report:report[", JobState.FAILED),
        (None, JobState.FAILED),
    ]
    status = status_from_jobs(m, jobs)
    assert set(status) == {"split", "count/count"}
    assert status["split"].state == "complete" and status["split"].badge == "1/1"
    assert status["count/count"].state == "running" and status["count/count"].badge == "1/2"
    full = with_nested(m, status)
    assert full["count"].state == "running" and "report" not in full


def test_a_step_run_again_counts_by_its_latest_attempt() -> None:
    """A resumed run's new attempt bears the failed one's name: the station is complete, not mixed
    (the CLI's graph showed a step that failed and then completed as 'mixed', 1/2)."""
    m = metro_map(load_pipeline(ROOT / "examples/09-nested.yaml"))
    jobs: list[tuple[str | None, JobState]] = [
        ("book-report:split", JobState.FAILED),
        ("book-report:split", JobState.COMPLETE),  # the attempt that replaced it
    ]
    status = status_from_jobs(m, jobs)
    assert status["split"].state == "complete" and status["split"].badge == "1/1"


@pytest.mark.parametrize(
    ("states", "runs", "expected"),
    [
        ([], None, None),
        ([JobState.READY, JobState.PENDING], 2, "pending"),
        ([JobState.PENDING, JobState.COMPLETE], 2, "running"),
        ([JobState.INFO], None, "running"),
        ([JobState.COMPLETE] * 2, 4, "running"),
        ([JobState.COMPLETE] * 4, 4, "complete"),
        ([JobState.COMPLETE] * 3, None, "complete"),
        ([JobState.FAILED, JobState.CANCELLED], 2, "failed"),
        ([JobState.FAILED, JobState.COMPLETE], 2, "mixed"),
        ([JobState.FAILED, JobState.RUNNING], 2, "mixed"),
    ],
)
def test_station_state(states: list[JobState], runs: int | None, expected: str | None) -> None:
    assert StationStatus.of(states, runs).state == expected


def test_a_sub_map_is_complete_only_when_every_station_is(tmp_path: Path) -> None:
    m = metro_map(load_pipeline(write_tree(tmp_path, RICH)))
    done = StationStatus.of([JobState.COMPLETE])
    partial = with_nested(m, {"evaluate/prep": done})
    assert partial["evaluate"].state == "running" and partial["evaluate"].badge == "1/8"
    everything = {p: StationStatus.of([JobState.COMPLETE] * (s.runs or 1), s.runs) for p, s in _paths(m).items()}
    assert with_nested(m, everything)["evaluate"].state == "complete"


def _paths(m: MetroMap) -> dict[str, Station]:
    return {s.path: s for s in m.walk() if s.path.startswith("evaluate/")}


# --------------------------------------------------------------------------- the command


def test_graph_command_needs_no_bus(tmp_path: Path) -> None:
    nowhere = ["--home", str(tmp_path / "home"), "--url", "nats://127.0.0.1:1"]  # would fail if it connected
    svg, mmd = tmp_path / "map.svg", tmp_path / "map.mmd"
    example = str(ROOT / "examples/02-parallel.yaml")
    assert main([*nowhere, "graph", example, "-o", str(svg), "--set", "runs=6"]) == 0
    assert text_at(stations(parse_svg(svg.read_text()))["sample"], "svg:text[@class='badge']") == "x6"
    assert main([*nowhere, "graph", example, "-o", str(mmd)]) == 0
    assert mmd.read_text().splitlines()[3] == "flowchart LR"
    assert main([*nowhere, "graph", str(tmp_path / "missing.yaml")]) == 2


async def test_graph_command_shows_a_workflows_live_status(bus: lb.Bus, bus_config: BusConfig, tmp_path: Path) -> None:
    runs = [("estimate-pi:sample[0]", JobState.COMPLETE), ("estimate-pi:sample[1]", JobState.RUNNING)]
    runs += [("other:sample[2]", JobState.FAILED), ("estimate-pi:average", JobState.PENDING)]
    for i, (name, state) in enumerate(runs):
        status = lb.JobStatus(job_id=f"job{i}", site="local", state=state, workflow_id="wf-graph", name=name)
        await bus.publish(lb.make_event(status, source="/sites/local/test"))
    out = tmp_path / "live.svg"
    args = build_parser().parse_args(
        ["graph", str(ROOT / "examples/02-parallel.yaml"), "--workflow", "wf-graph", "-o", str(out)]
    )
    assert await graph(args, bus_config) == 0
    found = stations(parse_svg(out.read_text()))
    assert found["sample"].get("data-status") == "running"
    assert text_at(found["sample"], "svg:g[@class='count']/svg:text") == "1/4"
    assert found["average"].get("data-status") == "pending"
