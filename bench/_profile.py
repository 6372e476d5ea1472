"""Where the time went: a short text summary of a py-spy or cProfile profile.

``python -m bench --profile DIR`` records one profile per benchmark; this turns each
into the two lists that answer "what limits this figure": functions by their own
time (where the CPU is spent) and by inclusive time (which path spends it).

    .venv/bin/python -m bench._profile DIR/dag.pyspy.txt
"""

from __future__ import annotations

import io
import pstats
import re
import sys
from collections import Counter
from pathlib import Path

_LINE_NO = re.compile(r":\d+\)$")
# Leaves that are a thread or the loop waiting, which py-spy does not always tell from work.
_WAITING = (
    "Condition.wait ",
    "EpollSelector.select ",
    "ThreadedChildWatcher._do_waitpid ",
    "Thread._wait_for_tstate_lock ",
)
_SITE = re.compile(r"\(.*?/(site-packages|lib/python3\.\d+)/")


def _frame(raw: str) -> str:
    """``func (path:line)`` -> ``func (short path)``: one entry per function, not per line."""
    name = _LINE_NO.sub(")", raw.strip())
    return _SITE.sub("(", name).replace(str(Path.cwd()) + "/", "")


def summarize_collapsed(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    per_process: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        if frames[0].startswith("process "):
            per_process[frames[0][:80]] += count
            frames = frames[1:] or frames
        named = [_frame(f) for f in frames]
        if named[-1].startswith(_WAITING):
            waiting += count
            continue
        own[named[-1]] += count
        for name in set(named):
            inclusive[name] += count
    out = io.StringIO()
    busy = max(1, total - waiting)
    out.write(
        f"{path.name}: {total} samples, {waiting} of them waiting (a thread blocked, the loop in select) and "
        f"left out; shares below are of the {busy} busy ones\n"
    )
    if per_process:
        out.write("\nby process:\n")
        for name, n in per_process.most_common(8):
            out.write(f"  {100 * n / total:5.1f}%  {name}\n")
    out.write("\nown time:\n")
    for name, n in own.most_common(top):
        out.write(f"  {100 * n / busy:5.1f}%  {name}\n")
    out.write("\ninclusive time:\n")
    for name, n in inclusive.most_common(top):
        out.write(f"  {100 * n / busy:5.1f}%  {name}\n")
    return out.getvalue()


def summarize_pstats(path: Path, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def summarize(path: Path) -> str:
    return summarize_pstats(path) if path.suffix == ".prof" else summarize_collapsed(path)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarize(Path(arg)))
