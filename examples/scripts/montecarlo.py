"""Estimate pi from random points in the unit square; write the estimate to OUT.

Usage: montecarlo.py SEED SAMPLES OUT
"""

import pathlib
import random
import sys


def main(seed: str, samples: str, out: str) -> None:
    rng = random.Random(int(seed))  # noqa: S311 - a simulation, not cryptography
    n = int(samples)
    inside = sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    estimate = 4.0 * inside / n
    target = pathlib.Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{estimate}\n", encoding="utf-8")
    print(f"seed {seed}, {n} samples: pi ~ {estimate}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
