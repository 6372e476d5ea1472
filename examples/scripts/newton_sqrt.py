"""One Newton step towards sqrt(TARGET); the current guess lives in STATE (iteration 0 starts afresh).

Prints the residual |x*x - TARGET| alone on stdout, so a loop can stop when it is small.
Usage: newton_sqrt.py STATE TARGET ITERATION
"""

import pathlib
import sys


def main(state_file: str, target: str, iteration: str) -> None:
    a = float(target)
    if a <= 0:
        sys.exit("TARGET must be positive")
    path = pathlib.Path(state_file)
    fresh = int(iteration) == 0 or not path.exists()
    x = max(a, 1.0) if fresh else float(path.read_text(encoding="utf-8"))
    x = (x + a / x) / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{x!r}\n", encoding="utf-8")
    print(abs(x * x - a))


if __name__ == "__main__":
    main(*sys.argv[1:4])
