"""Every block of README.md runs as written (issue 17, "The README is tested").

The blocks are read from README.md itself: one test per fenced block, with the id
``README.md:<line>`` (the line of the opening fence).

- ```` ```sh ```` blocks run with ``bash -euo pipefail`` in a fresh directory, with a fresh
  ``HOME`` and ``LWFM_BUS_HOME`` (no other ``LWFM_*`` variable) and this venv's ``bin`` first on
  ``PATH``, so ``lwfm-bus`` and ``python3`` are this project's.  The first command that needs
  the bus starts one in the background (the default ``LWFM_BUS_AUTOSTART``); when the block
  ends, the test stops every bus left under its directory with ``lwfm-bus down`` and kills
  whatever the block itself left running.
- ```` ```python ```` blocks run the same way, as a script (``python -``): they must be complete
  programs (``asyncio.run(main())``), as a reader would copy them.
- ```` ```toml ```` blocks must parse (``tomllib``), and a ``sites.toml`` must load as ``up`` loads
  it (each adapter checks its options); ```` ```yaml ```` blocks are pipeline files and
  must pass ``lwfm-bus validate``.  A block in any other language fails: add it here first.

Markers are HTML comments (invisible when the Markdown is rendered) on the lines just before
the opening fence, blank lines allowed between; one directive per comment::

    <!-- readme: skip "why" -->       not run: it never ends by design, or takes minutes
    <!-- readme: needs WHAT -->       needs what the test does not wire (ssh, slurm, federation):
                                      skipped, and the reason says so
    <!-- readme: setup FILE -->       run tests/cli/readme/FILE with bash in the block's directory
                                      first (it finds $README_FIXTURES and $README_REPO); it creates
                                      the files the block names (in.dat, q.json, ...)
    <!-- readme: xfail "why" -->      the block is right but the code is wrong (a known bug):
                                      strict, so the test fails once the bug is fixed
    <!-- readme: timeout SECONDS -->  the block's time limit (default 90)

A marker that is not directly before a fence, or an unknown directive, fails the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lwfm_bus._sites._registry import load_sites

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FIXTURES = Path(__file__).resolve().parent / "readme"
VENV_BIN = Path(sys.executable).parent
DEFAULT_TIMEOUT_S = 90.0  # under pytest-timeout's 120 s, leaving time to stop the bus

FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*readme:\s*(.*?)\s*-->\s*$")
LANGUAGES = {"sh", "python", "toml", "yaml"}
NEEDS = {  # what a `needs` marker names, and why the block is then skipped
    "ssh": "an SSH host: the test sshd (tests/sites/_sshd.py) is not started for README blocks",
    "slurm": "a Slurm cluster: the test Slurm (tests/sites/_slurm.py) is not started for README blocks",
    "federation": "several buses (a hub and its leaves, on several machines); tests/federation/ runs one on loopback",
}


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None = None
    xfail: str | None = None
    setup: list[str] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT_S


def _apply(block: Block, directive: str, where: int) -> None:
    words = shlex.split(directive)
    if not words:
        raise ValueError(f"README.md:{where}: empty readme marker")
    verb, args = words[0], words[1:]
    if verb == "skip" and len(args) == 1:
        block.skip = args[0]
    elif verb == "needs" and len(args) >= 1 and set(args) <= set(NEEDS):
        block.skip = "needs " + "; and ".join(NEEDS[a] for a in args)
    elif verb == "xfail" and len(args) == 1:
        block.xfail = args[0]
    elif verb == "setup" and len(args) == 1:
        if not (FIXTURES / args[0]).is_file():
            raise ValueError(f"README.md:{where}: setup file {args[0]} is not in {FIXTURES}")
        block.setup.append(args[0])
    elif verb == "timeout" and len(args) == 1:
        block.timeout = float(args[0])
    else:
        raise ValueError(f"README.md:{where}: unknown readme marker {directive!r}")


def parse_readme(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with their markers; raises ValueError on a stray marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    attached: set[int] = set()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"README.md:{start + 1}: block never closed")
        block = Block(line=start + 1, lang=m[1], text="\n".join(lines[start + 1 : end]) + "\n")
        j = start - 1
        markers: list[tuple[int, str]] = []
        while j >= 0 and (not lines[j].strip() or MARKER.match(lines[j])):
            if mm := MARKER.match(lines[j]):
                markers.append((j + 1, mm[1]))
                attached.add(j)
            j -= 1
        for where, directive in reversed(markers):
            _apply(block, directive, where)
        blocks.append(block)
        i = end + 1
    stray = [n + 1 for n, line in enumerate(lines) if "<!-- readme:" in line and n not in attached]
    if stray:
        raise ValueError(f"readme markers not directly before a block, at line(s) {stray}")
    return blocks


BLOCKS = parse_readme(README.read_text())


def _params() -> list[object]:
    params: list[object] = []
    for block in BLOCKS:
        marks: list[pytest.MarkDecorator] = []
        if block.skip is not None:
            marks.append(pytest.mark.skip(reason=f"README.md:{block.line}: {block.skip}"))
        if block.xfail is not None:
            marks.append(pytest.mark.xfail(reason=f"README.md:{block.line}: {block.xfail}", strict=True))
        params.append(pytest.param(block, id=f"README.md:{block.line}", marks=marks))
    return params


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LWFM_", "XDG_", "PYTHON"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        LWFM_BUS_HOME=str(tmp_path / "bus"),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        README_FIXTURES=str(FIXTURES),
        README_REPO=str(REPO),
    )
    return env


def _run(argv: list[str], *, stdin: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` in its own process group; its exit code (None: timed out) and output.

    Whatever it left in its group (``lwfm-bus up &``, say) is killed when it ends.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(stdin, timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    return code, out


def _stop_leftovers(tmp_path: Path, env: dict[str, str]) -> None:
    """``lwfm-bus down`` for every home under ``tmp_path`` that still has a bus."""
    for record in sorted(tmp_path.rglob("server.json")):
        subprocess.run(
            [str(VENV_BIN / "lwfm-bus"), "--home", str(record.parent), "down"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _logs(tmp_path: Path) -> str:
    parts = [f"--- {log}:\n{_tail(log.read_text(errors='replace'), 15)}" for log in sorted(tmp_path.rglob("up.log"))]
    return "\n".join(parts)


@pytest.mark.parametrize("block", _params())
def test_readme_block(block: Block, tmp_path: Path) -> None:
    if block.lang == "toml":
        doc = tomllib.loads(block.text)
        if "sites" in doc:  # a sites.toml: every option checked by its adapter, as `up` would
            (tmp_path / "sites.toml").write_text(block.text)
            specs = load_sites(tmp_path / "sites.toml")
            assert set(doc["sites"]) <= set(specs)
            assert all(spec.broken is None for spec in specs.values()), [spec.broken for spec in specs.values()]
        return
    assert block.lang in LANGUAGES, f"README.md:{block.line}: no rule for ```{block.lang} blocks; add one here"
    work = tmp_path / "work"
    work.mkdir()
    env = _environment(tmp_path)
    try:
        for name in block.setup:
            code, out = _run(
                ["bash", "-euo", "pipefail", str(FIXTURES / name)], stdin="", cwd=work, env=env, timeout=60
            )
            assert code == 0, f"README.md:{block.line}: setup {name} failed ({code}):\n{out}"
        if block.lang == "sh":
            argv = ["bash", "-euo", "pipefail", "-s"]
            stdin = block.text
        elif block.lang == "python":
            argv = [sys.executable, "-"]
            stdin = block.text
        else:  # yaml: a pipeline file
            (work / "block.yaml").write_text(block.text)
            argv = [str(VENV_BIN / "lwfm-bus"), "validate", "block.yaml"]
            stdin = ""
        code, out = _run(argv, stdin=stdin, cwd=work, env=env, timeout=block.timeout)
        if code is None:
            pytest.fail(
                f"README.md:{block.line}: did not end within {block.timeout:g}s\n{_tail(out)}\n{_logs(tmp_path)}"
            )
        assert code == 0, f"README.md:{block.line}: exit {code}\n{_tail(out)}\n{_logs(tmp_path)}"
    finally:
        _stop_leftovers(tmp_path, env)


def test_markers_are_attached_and_known() -> None:
    """A marker is read only before a fence, and each block's language has a rule."""
    assert BLOCKS, "README.md has no blocks"
    assert {b.lang for b in BLOCKS} <= LANGUAGES
    with pytest.raises(ValueError, match="not directly before a block"):
        parse_readme('<!-- readme: skip "x" -->\n\ntext\n\n```sh\ntrue\n```\n')
    with pytest.raises(ValueError, match="unknown readme marker"):
        parse_readme("<!-- readme: skipp -->\n```sh\ntrue\n```\n")
    (block,) = parse_readme('<!-- readme: skip "why" -->\n\n<!-- readme: timeout 5 -->\n```sh\ntrue\n```\n')
    assert (block.line, block.lang, block.skip, block.timeout, block.text) == (4, "sh", "why", 5.0, "true\n")
