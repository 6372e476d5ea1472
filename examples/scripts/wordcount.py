"""Count the words of a text file, or of every .txt file in a directory; write {word: count} as JSON.

Usage: wordcount.py TEXT_OR_DIR OUT.json
"""

import collections
import json
import pathlib
import re
import sys


def main(source: str, out: str) -> None:
    src = pathlib.Path(source)
    files = sorted(src.glob("*.txt")) if src.is_dir() else [src]
    if not files:
        sys.exit(f"no .txt files in {src}")
    counts: collections.Counter[str] = collections.Counter()
    for file in files:
        counts.update(re.findall(r"[a-z']+", file.read_text(encoding="utf-8").lower()))
    target = pathlib.Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(dict(counts.most_common()), indent=1) + "\n", encoding="utf-8")
    print(f"{sum(counts.values())} words, {len(counts)} distinct, from {len(files)} file(s)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
