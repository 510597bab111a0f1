"""Runs every `bench/bench_*.py` module's `main()` in name order, or those named as arguments.

Benches in ASKED_ONLY run only when named (they need data or time `make bench` should not spend:
the 10M-member bench generates a 26 GB cluster on its first run), or when their variable is 1.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from pathlib import Path

ASKED_ONLY = {"bench_audience_10m": "MEMBEROPS_BENCH_10M"}


def main() -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    wanted = set(sys.argv[1:])
    for name in names:
        if wanted and name not in wanted:
            continue
        if not wanted and name in ASKED_ONLY and os.environ.get(ASKED_ONLY[name]) != "1":
            print(f"== {name}: skipped (run it by name, or with {ASKED_ONLY[name]}=1)", flush=True)
            continue
        print(f"== {name}", flush=True)
        entry = importlib.import_module(f"bench.{name}").main
        result = entry()
        if inspect.isawaitable(result):
            asyncio.run(result)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
