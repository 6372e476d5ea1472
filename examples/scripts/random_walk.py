"""Advance a random walk by one step, keeping its state in a JSON file (created on the first step).

Each call is one step of a sequence: step 0 starts afresh, and the step number seeds the
move, so a rerun of the same sequence walks the same path.
Usage: random_walk.py STATE.json WALKER STEP
"""

import json
import pathlib
import random
import sys


def main(state_file: str, walker: str, step: str) -> None:
    path = pathlib.Path(state_file)
    fresh = int(step) == 0 or not path.exists()
    state = {"walker": walker, "path": [0]} if fresh else json.loads(path.read_text(encoding="utf-8"))
    if len(state["path"]) != int(step) + 1:
        sys.exit(f"{path}: expected step {len(state['path']) - 1}, got {step}: run the steps in order")
    move = random.Random(f"{walker}/{step}").choice((-1, 1))  # noqa: S311 - a simulation, not cryptography
    state["path"].append(state["path"][-1] + move)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state) + "\n", encoding="utf-8")
    print(f"{walker} step {step}: position {state['path'][-1]}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
