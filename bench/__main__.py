"""Runs every `bench/bench_*.py` module's `main()` in name order."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from pathlib import Path


def main() -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    wanted = set(sys.argv[1:])
    for name in names:
        if wanted and name not in wanted:
            continue
        print(f"== {name}", flush=True)
        entry = importlib.import_module(f"bench.{name}").main
        result = entry()
        if inspect.isawaitable(result):
            asyncio.run(result)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
