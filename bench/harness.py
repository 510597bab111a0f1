"""A closed-loop load generator: C callers each issue calls back to back for a fixed time.

Latencies are kept per call so p50 and p99 come from the whole run, not from averages.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    name: str
    concurrency: int
    calls: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the successful calls; NaN when none succeeded."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def line(self) -> str:
        return (
            f"{self.name:<12} c={self.concurrency}  {self.throughput:8.0f} calls/s  "
            f"p50 {self.percentile(50):6.2f} ms  p99 {self.percentile(99):6.2f} ms"
            + (f"  ERRORS {self.errors}" if self.errors else "")
        )


async def measure(
    name: str, call: Callable[[int], Awaitable[object]], *, concurrency: int, seconds: float
) -> Result:
    """Runs `call(i)` from `concurrency` callers for `seconds`; any exception counts as an error."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            counter += 1
            started = time.perf_counter()
            try:
                await call(counter)
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Result(name, concurrency, len(latencies), errors, elapsed, tuple(latencies))


def median_round(results: list[Result]) -> Result:
    """The round with the median throughput: one noisy round neither flatters nor sinks a figure."""
    ordered = sorted(results, key=lambda r: r.throughput)
    return ordered[len(ordered) // 2]


def ratio_line(subject: Result, baseline: Result) -> str:
    if not baseline.calls or not subject.calls:
        return f"ratio {subject.name}/{baseline.name}  n/a (a side had no successful calls)"
    return (
        f"ratio {subject.name}/{baseline.name}  throughput {subject.throughput / baseline.throughput:.2f}x  "
        f"p99 {subject.percentile(99) / baseline.percentile(99):.2f}x"
    )
