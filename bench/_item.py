"""One benchmark in its own process: ``python -m bench._item MODULE --tmp DIR --out FILE [--quick]``.

The suite runs each benchmark this way so that a hung one can be stopped without
taking the suite down (SIGINT first, so its servers are shut down by its own
``async with`` blocks; then SIGKILL of its process group), and so that no benchmark
inherits another's memory, event loop or page cache of Python objects.

The module's ``figures(quick, tmp)`` returns ``(figures, details)``; both are written
to ``--out`` as JSON.  A wait inside the benchmark that ran out of time writes
``{"timed_out": ...}`` instead (exit code 3; the suite reports a timeout, as for its own
hard limit).  Anything else is a crash: non-zero exit, traceback on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lwfm_bus import JobTimeoutError


def _finite(value: Any) -> Any:
    """NaN and infinities (a rate with nothing to divide) become null: the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _only_timeouts(exc: BaseException) -> bool:
    """A wait that ran out of time (``TimeoutError``, ``JobTimeoutError``), possibly inside task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_timeouts(e) for e in exc.exceptions)
    return isinstance(exc, TimeoutError | JobTimeoutError)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", help="e.g. bench.dag")
    parser.add_argument("--tmp", type=Path, required=True, help="scratch directory (the suite removes it)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    t0 = time.perf_counter()
    try:
        figs, details = module.figures(args.quick, args.tmp)
    except BaseException as exc:
        if not _only_timeouts(exc):
            raise
        # Too slow on this machine, not broken: the suite reports a timeout, never a crash.
        traceback.print_exc()
        args.out.write_text(json.dumps({"timed_out": f"{type(exc).__name__}: {exc}"[:500]}) + "\n")
        return 3
    args.out.write_text(
        json.dumps(
            _finite({"figures": figs, "details": details, "wall_s": round(time.perf_counter() - t0, 2)}),
            indent=2,
            allow_nan=False,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
