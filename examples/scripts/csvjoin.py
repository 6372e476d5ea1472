"""Join two CSV files on a shared column (an inner join), writing the result as CSV.

Usage: csvjoin.py LEFT.csv RIGHT.csv KEY OUT.csv
"""

import csv
import pathlib
import sys


def main(left: str, right: str, key: str, out: str) -> None:
    with open(right, newline="", encoding="utf-8") as f:
        by_key = {row[key]: row for row in csv.DictReader(f)}
    with open(left, newline="", encoding="utf-8") as f:
        rows = [{**row, **by_key[row[key]]} for row in csv.DictReader(f) if row[key] in by_key]
    if not rows:
        sys.exit("the join is empty")
    target = pathlib.Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows joined on {key}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
