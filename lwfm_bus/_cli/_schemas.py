"""``lwfm-bus schemas``: regenerate (or check) the JSON Schemas in ``schemas/``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._config import BusConfig
from .._schemas import generate_schemas, render, write_schemas
from ._print import shown


def register(sub: Any) -> None:
    p = sub.add_parser("schemas", help="write the JSON Schema of every event and file format")
    p.add_argument("--dir", type=Path, default=Path("schemas"), help="output directory (default: ./schemas)")
    p.add_argument("--check", action="store_true", help="only report drift; exit 1 if any file differs")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, config: BusConfig) -> int:
    if args.check:
        stale = [
            rel
            for rel, s in generate_schemas().items()
            if not (args.dir / rel).exists() or (args.dir / rel).read_text() != render(s)
        ]
        for rel in stale:
            print(f"stale: {shown(args.dir / rel)}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(args.dir):
        print(shown(path))
    return 0
