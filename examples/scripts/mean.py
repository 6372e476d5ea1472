"""Average the numbers found in the files matching PATTERN inside DIR; write the mean to OUT.

The pattern is matched here (not by a shell), so the step needs no shell.
Usage: mean.py DIR PATTERN OUT
"""

import pathlib
import statistics
import sys


def main(directory: str, pattern: str, out: str) -> None:
    files = sorted(pathlib.Path(directory).glob(pattern))
    if not files:
        sys.exit(f"nothing matches {pattern} in {directory}")
    values = [float(f.read_text(encoding="utf-8").split()[0]) for f in files]
    mean = statistics.fmean(values)
    spread = statistics.pstdev(values)
    pathlib.Path(out).write_text(f"{mean}\n", encoding="utf-8")
    print(f"{len(values)} values: mean {mean:.6f}, spread {spread:.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
