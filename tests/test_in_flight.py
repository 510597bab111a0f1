"""The keyed limit's contract: how many of a key run, in which order the rest start, what a
cancelled waiter or a failing call leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from runtime.in_flight import KeyedLimit
from tests.waiting import until


class Calls:
    """Calls that record when they start and wait for their own gate."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def make(self, name: str, *, fail: bool = False) -> Callable[[], Awaitable[str]]:
        gate = self.gates[name] = asyncio.Event()

        async def run() -> str:
            self.started.append(name)
            await gate.wait()
            if fail:
                raise RuntimeError(name)
            return name

        return run

    def queue(self, limit: KeyedLimit[str], key: str, name: str, *, fail: bool = False) -> asyncio.Task[str]:
        return asyncio.create_task(limit.run(key, self.make(name, fail=fail)))


async def arrived(limit: KeyedLimit[str], key: str, count: int) -> None:
    """Until `count` calls of `key` run or wait: a call that finds a free slot has started by then
    (taking a free slot does not yield), so who started is settled."""
    await until(lambda: limit.callers(key) == count, f"{count} calls of {key} at the limit")


async def started(calls: Calls, count: int) -> None:
    await until(lambda: len(calls.started) == count, f"{count} calls started")


async def test_at_most_the_limit_of_one_key_run_and_the_rest_start_in_arrival_order() -> None:
    limit: KeyedLimit[str] = KeyedLimit(2)
    calls = Calls()
    names = ["a", "b", "c", "d", "e"]
    tasks = [calls.queue(limit, "template", n) for n in names]
    await arrived(limit, "template", 5)
    assert calls.started == ["a", "b"]
    calls.gates["b"].set()
    await started(calls, 3)
    assert calls.started == ["a", "b", "c"]
    calls.gates["a"].set()
    await started(calls, 4)
    assert calls.started == ["a", "b", "c", "d"]
    for gate in calls.gates.values():
        gate.set()
    assert await asyncio.gather(*tasks) == names
    assert limit.keys_in_use() == 0


async def test_other_keys_do_not_wait() -> None:
    limit: KeyedLimit[str] = KeyedLimit(1)
    calls = Calls()
    first, queued, other = [
        calls.queue(limit, key, f"{key}-{n}") for key, n in [("one", 1), ("one", 2), ("two", 1)]
    ]
    await arrived(limit, "one", 2)
    await arrived(limit, "two", 1)
    assert calls.started == ["one-1", "two-1"]
    assert limit.keys_in_use() == 2
    for gate in calls.gates.values():
        gate.set()
    await asyncio.gather(first, queued, other)
    assert limit.keys_in_use() == 0


async def test_a_failing_call_frees_its_slot_and_raises_to_its_caller() -> None:
    limit: KeyedLimit[str] = KeyedLimit(1)
    calls = Calls()
    failing = calls.queue(limit, "k", "bad", fail=True)
    after = calls.queue(limit, "k", "good")
    await arrived(limit, "k", 2)
    calls.gates["bad"].set()
    with pytest.raises(RuntimeError, match="bad"):
        await failing
    await started(calls, 2)
    assert calls.started == ["bad", "good"]
    calls.gates["good"].set()
    assert await after == "good"
    assert limit.keys_in_use() == 0


async def test_a_cancelled_waiter_never_runs_and_leaves_no_key_behind() -> None:
    limit: KeyedLimit[str] = KeyedLimit(1)
    calls = Calls()
    running, waiting = calls.queue(limit, "k", "running"), calls.queue(limit, "k", "waiting")
    await arrived(limit, "k", 2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    calls.gates["running"].set()
    assert await running == "running"
    assert calls.started == ["running"]
    assert limit.keys_in_use() == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        KeyedLimit(0)
