"""Runs a service with its clock set by the bench: `python -m bench.clocked <service>`.

MEMBEROPS_BENCH_CLOCK is `frozen:<ISO time>` (the clock stands still there: a recompute repeated
on unchanged data must change nothing, and windows end where the generated data ends) or
`from:<ISO time>` (the clock starts there when the process starts and runs). The service's
wiring takes the clock (tagging's and audience's do), so the API and background loops run on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import os
import sys
import time
from collections.abc import Callable

from bench.servers import CLOCK_ENV
from runtime import app


def parse(spec: str) -> Callable[[], dt.datetime]:
    mode, _, moment = spec.partition(":")
    start = dt.datetime.fromisoformat(moment)
    if start.tzinfo is None:
        raise ValueError(f"{CLOCK_ENV}: {moment!r} needs a UTC offset")
    if mode == "frozen":
        return lambda: start
    if mode == "from":
        origin = time.monotonic()
        return lambda: start + dt.timedelta(seconds=time.monotonic() - origin)
    raise ValueError(f"{CLOCK_ENV} must be frozen:<time> or from:<time>, not {spec!r}")


def main() -> None:
    server = importlib.import_module(f"services.{sys.argv[1]}.server")
    clock = parse(os.environ[CLOCK_ENV])
    wire = functools.partial(server.wire, clock=clock)
    app.main(dataclasses.replace(server.DEFINITION, wire=wire))


if __name__ == "__main__":
    main()
