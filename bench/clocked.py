"""Runs the tagging service with its clock set by the bench: `python -m bench.clocked`.

MEMBEROPS_BENCH_CLOCK is `frozen:<ISO time>` (the clock stands still there: a recompute repeated
on unchanged data must change nothing, and windows end where the generated data ends) or
`from:<ISO time>` (the clock starts there when the process starts and runs). The service itself
is untouched: every `TaggingApi` it builds gets this clock instead of the wall clock.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

from bench.servers import CLOCK_ENV
from services.common import app
from services.tagging import api, server


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
    clock = parse(os.environ[CLOCK_ENV])
    if "clock" not in inspect.signature(api.TaggingApi.__init__).parameters:
        raise SystemExit("TaggingApi no longer takes a clock: bench/clocked.py needs updating")
    original = api.TaggingApi.__init__

    def with_clock(self: api.TaggingApi, *args: Any, **kwargs: Any) -> None:
        kwargs["clock"] = clock
        original(self, *args, **kwargs)

    setattr(api.TaggingApi, "__init__", with_clock)  # noqa: B010 (mypy forbids assigning a method)
    app.main(server.DEFINITION)


if __name__ == "__main__":
    main()
