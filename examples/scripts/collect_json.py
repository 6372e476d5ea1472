"""Collect every JSON file of a directory into one JSON list (sorted by file name).

Usage: collect_json.py DIR OUT.json
"""

import json
import pathlib
import sys


def main(directory: str, out: str) -> None:
    files = sorted(pathlib.Path(directory).glob("*.json"))
    if not files:
        sys.exit(f"no JSON files in {directory}")
    records = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    pathlib.Path(out).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    print(f"{len(records)} records collected into {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
