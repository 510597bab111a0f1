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


@dataclass(frozen=True)
class OpenLoopResult:
    """Calls started at a fixed rate whatever the earlier ones did; latency counts from the moment
    a call was due, so a stalled client or server shows up as latency, not as a lower rate. Failed
    calls count as slower than every successful one in the percentiles."""

    name: str
    rate: float
    sent: int
    seconds: float
    latencies_ms: tuple[float, ...]
    # What each failed call raised: the gRPC status code name or the exception type.
    failures: tuple[str, ...]
    # How late the worst call started compared with its schedule (client overload shows here).
    max_start_lag_ms: float

    @property
    def achieved_rate(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Nearest rank over all calls, failures as +inf; NaN when nothing was sent."""
        ordered = sorted(self.latencies_ms) + [math.inf] * len(self.failures)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def failure_text(self) -> str:
        kinds: dict[str, int] = {}
        for kind in self.failures:
            kinds[kind] = kinds.get(kind, 0) + 1
        return ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))

    def line(self) -> str:
        def ms(value: float) -> str:
            return f"{value:8.2f} ms" if math.isfinite(value) else "  failed   "

        return (
            f"{self.name:<12} open loop {self.rate:.0f}/s  achieved {self.achieved_rate:6.1f}/s  "
            f"p50 {ms(self.percentile(50))}  p99 {ms(self.percentile(99))}  "
            f"max ok {max(self.latencies_ms, default=math.nan):8.2f} ms  ({self.sent} calls, "
            f"start lag <= {self.max_start_lag_ms:.1f} ms)"
            + (f"  FAILED {len(self.failures)}: {self.failure_text()}" if self.failures else "")
        )


def _failure_kind(error: Exception) -> str:
    code = getattr(error, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:
            pass
    return type(error).__name__


async def open_loop(
    name: str, call: Callable[[int], Awaitable[object]], *, rate: float, seconds: float
) -> OpenLoopResult:
    """Starts `call(i)` every 1/rate seconds for `seconds`, then waits for the calls to end."""
    latencies: list[float] = []
    failures: list[str] = []
    lag = 0.0
    count = int(rate * seconds)
    start = time.perf_counter() + 0.01

    async def one(i: int, due: float) -> None:
        try:
            await call(i)
        except Exception as error:
            failures.append(_failure_kind(error))
            return
        latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, time.perf_counter() - due)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return OpenLoopResult(
        name, rate, count, time.perf_counter() - start, tuple(latencies), tuple(failures), lag * 1000
    )


def open_loop_ratio_line(subject: OpenLoopResult, baseline: OpenLoopResult) -> str:
    ratios = []
    for p in (50, 99):
        s, b = subject.percentile(p), baseline.percentile(p)
        ratios.append(f"p{p} {s / b:.1f}x" if math.isfinite(s) and math.isfinite(b) and b else f"p{p} n/a")
    return f"ratio {subject.name}/{baseline.name}  " + "  ".join(ratios)


async def against_baseline(
    subject: tuple[str, Callable[[int], Awaitable[object]]],
    baseline: tuple[str, Callable[[int], Awaitable[object]]],
    *,
    concurrency: int,
    seconds: float,
    rounds: int,
) -> None:
    """Warms both calls up, measures them in interleaved rounds (so drift on a noisy machine hits
    both alike), prints each median round and their ratio; exits non-zero when any call failed."""
    for _, warm in (baseline, subject):
        await measure("warmup", warm, concurrency=concurrency, seconds=1)
    results: dict[str, list[Result]] = {subject[0]: [], baseline[0]: []}
    for _ in range(rounds):
        for name, call in (baseline, subject):
            results[name].append(await measure(name, call, concurrency=concurrency, seconds=seconds))
    measured, base = median_round(results[subject[0]]), median_round(results[baseline[0]])
    print(measured.line())
    print(base.line())
    print(ratio_line(measured, base))
    if measured.errors or base.errors:
        raise SystemExit("benchmark calls failed")
