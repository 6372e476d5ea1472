"""Print the N most frequent words of a {word: count} JSON file (as wordcount.py writes it).

Usage: top_words.py COUNTS.json N
"""

import json
import pathlib
import sys


def main(counts_file: str, n: str) -> None:
    counts = json.loads(pathlib.Path(counts_file).read_text(encoding="utf-8"))
    for word, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: int(n)]:
        print(f"{count:6d} {word}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
