"""Split a text into one file per chapter (a line starting with "Chapter") in OUT_DIR.

Usage: split_chapters.py TEXT OUT_DIR
"""

import pathlib
import sys


def main(source: str, out_dir: str) -> None:
    target = pathlib.Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    chapters: list[list[str]] = []
    for line in pathlib.Path(source).read_text(encoding="utf-8").splitlines():
        if line.startswith("Chapter") or not chapters:
            chapters.append([])
        chapters[-1].append(line)
    for n, lines in enumerate(chapters, start=1):
        (target / f"chapter-{n:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(chapters)} chapters written to {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
