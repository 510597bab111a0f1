"""The batcher's contract: who waits, who runs together, and who gets which outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from runtime.batching import Batcher, KeyedBatcher


class Recorder:
    """A run that records its batches and answers each item doubled, or with the error it names,
    and waits for `gate` while the gate is closed."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: Sequence[object]) -> Sequence[object]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            if "fail the batch" in items:
                raise RuntimeError("the batch failed")
            return [ValueError(item) if isinstance(item, str) else item * 2 for item in items]  # type: ignore[operator]
        finally:
            self.running -= 1


async def queued(batcher: Batcher[object, object], items: Sequence[object]) -> list[asyncio.Task[object]]:
    tasks = [asyncio.create_task(batcher.submit(item)) for item in items]
    for _ in range(3):  # each task reaches the batcher, then each batch it started reaches its run
        await asyncio.sleep(0)
    return tasks


async def test_a_call_under_no_load_runs_at_once_alone() -> None:
    run = Recorder()
    batcher: Batcher[object, object] = Batcher(run, in_flight=1)
    assert await batcher.submit(21) == 42
    assert run.batches == [[21]]


async def test_calls_arriving_during_a_batch_run_together_in_the_next() -> None:
    run = Recorder()
    run.gate.clear()
    batcher: Batcher[object, object] = Batcher(run, in_flight=1)
    first = await queued(batcher, [1])
    rest = await queued(batcher, [2, 3, 4])
    assert run.batches == [[1]]
    run.gate.set()
    assert await asyncio.gather(*first, *rest) == [2, 4, 6, 8]
    assert run.batches == [[1], [2, 3, 4]]


async def test_batches_in_flight_and_their_size_are_bounded() -> None:
    run = Recorder()
    run.gate.clear()
    batcher: Batcher[object, object] = Batcher(run, in_flight=2, max_size=3)
    tasks = await queued(batcher, list(range(10)))
    assert run.batches == [[0], [1]]
    run.gate.set()
    assert await asyncio.gather(*tasks) == [2 * i for i in range(10)]
    assert run.most_running == 2
    assert sorted(len(b) for b in run.batches) == [1, 1, 2, 3, 3]
    assert sorted(i for b in run.batches for i in b) == list(range(10))  # type: ignore[type-var]


async def test_an_item_that_fails_fails_only_its_own_caller() -> None:
    run = Recorder()
    run.gate.clear()
    batcher: Batcher[object, object] = Batcher(run, in_flight=1)
    plug = await queued(batcher, [0])
    tasks = await queued(batcher, [1, "bad", 3])
    run.gate.set()
    outcomes = await asyncio.gather(*plug, *tasks, return_exceptions=True)
    assert outcomes[:2] == [0, 2] and outcomes[3] == 6
    assert isinstance(outcomes[2], ValueError) and outcomes[2].args == ("bad",)


async def test_a_failed_run_fails_every_caller_of_that_batch_and_no_other() -> None:
    run = Recorder()
    run.gate.clear()
    batcher: Batcher[object, object] = Batcher(run, in_flight=1, max_size=2)
    plug = await queued(batcher, [0])
    doomed = await queued(batcher, [1, "fail the batch"])
    later = await queued(batcher, [5])
    run.gate.set()
    assert await asyncio.gather(*plug) == [0]
    for task in doomed:
        with pytest.raises(RuntimeError, match="the batch failed"):
            await task
    assert await asyncio.gather(*later) == [10]


async def test_a_cancelled_caller_leaves_its_batch_to_the_others() -> None:
    run = Recorder()
    run.gate.clear()
    batcher: Batcher[object, object] = Batcher(run, in_flight=1)
    plug = await queued(batcher, [0])
    leaving, staying = await queued(batcher, [1, 2])
    leaving.cancel()
    run.gate.set()
    assert await asyncio.gather(*plug, staying) == [0, 4]
    assert run.batches == [[0], [1, 2]]  # the cancelled item had already joined its batch
    assert leaving.cancelled()


async def test_a_run_answering_the_wrong_number_of_outcomes_is_an_error_for_its_callers() -> None:
    async def short(items: Sequence[int]) -> Sequence[int]:
        return list(items)[:-1]

    batcher: Batcher[int, int] = Batcher(short, in_flight=1)
    with pytest.raises(RuntimeError, match="gave 0 outcomes"):
        await batcher.submit(1)


async def test_items_of_different_keys_never_share_a_batch() -> None:
    batches: list[tuple[str, list[int]]] = []
    gate = asyncio.Event()

    async def run(key: str, items: Sequence[int]) -> Sequence[int]:
        batches.append((key, list(items)))
        await gate.wait()
        return [len(key) * item for item in items]

    batcher: KeyedBatcher[str, int, int] = KeyedBatcher(run, in_flight=1)
    plugs = [asyncio.create_task(batcher.submit(key, 0)) for key in ("a", "bb")]
    rest = [asyncio.create_task(batcher.submit(key, i)) for i, key in enumerate(["a", "bb", "a", "bb"], 1)]
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*plugs, *rest) == [0, 0, 1, 4, 3, 8]
    assert sorted(batches) == [("a", [0]), ("a", [1, 3]), ("bb", [0]), ("bb", [2, 4])]


async def test_the_next_batch_starts_before_the_finished_batchs_callers_resume() -> None:
    """So the next statement is at the database while the callers of the last one reply."""
    events: list[str] = []
    gate = asyncio.Event()

    async def run(items: Sequence[int]) -> Sequence[int]:
        events.append(f"run {list(items)}")
        await gate.wait()
        return list(items)

    batcher: Batcher[int, int] = Batcher(run, in_flight=1)

    async def call(item: int) -> None:
        await batcher.submit(item)
        events.append(f"answered {item}")

    first = asyncio.create_task(call(0))
    for _ in range(3):
        await asyncio.sleep(0)
    rest = [asyncio.create_task(call(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *rest)
    assert events == ["run [0]", "run [1, 2]", "answered 0", "answered 1", "answered 2"]
