"""Summarise one numeric column of a CSV file (count, min, mean, max) into OUT_DIR/<file stem>.json.

Usage: csvstats.py CSV COLUMN OUT_DIR
"""

import csv
import json
import pathlib
import statistics
import sys


def main(source: str, column: str, out_dir: str) -> None:
    with open(source, newline="", encoding="utf-8") as f:
        values = [float(row[column]) for row in csv.DictReader(f)]
    if not values:
        sys.exit(f"{source}: no rows")
    stats = {"file": source, "count": len(values), "min": min(values), "mean": statistics.fmean(values)}
    stats["max"] = max(values)
    target = pathlib.Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{pathlib.Path(source).stem}.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(stats))


if __name__ == "__main__":
    main(*sys.argv[1:4])
