"""Coalescing concurrent calls into batches, the way a database commits a group.

A call never waits for a timer: while fewer than `in_flight` batches run, a submitted item starts a
batch at once (alone, under light load). Items submitted while that many run queue up, and the
first batch to finish takes everything queued (up to `max_size`) as the next one. Under load the
batches grow by themselves, and each costs one round trip instead of one per item.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Result = TypeVar("Result")

# Runs a batch; one outcome per item, in the items' order: its result, or the exception its caller
# gets. An exception raised by the run itself goes to every caller of the batch.
Run = Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]]
KeyedRun = Callable[[Key, Sequence[Item]], Awaitable[Sequence[Result | BaseException]]]


class Batcher(Generic[Item, Result]):
    def __init__(self, run: Run[Item, Result], *, in_flight: int = 2, max_size: int = 64) -> None:
        if in_flight < 1 or max_size < 1:
            raise ValueError("in_flight and max_size must be at least 1")
        self._run = run
        self._in_flight = in_flight
        self._max_size = max_size
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """The item's outcome once the batch it joined has run. A cancelled caller does not take
        its item back: the batch may already be at the database."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._running) < self._in_flight:
            self._start()
        return await future

    def _start(self) -> None:
        size = min(len(self._queue), self._max_size)
        batch = [self._queue.popleft() for _ in range(size)]
        task = asyncio.create_task(self._run_batch(batch))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        while self._queue and len(self._running) < self._in_flight:
            self._start()

    def _next(self) -> None:
        """Frees the running batch's place and starts the next batch, before the finished batch's
        callers are answered: the next statement is on its way while they write their replies."""
        task = asyncio.current_task()
        if task is not None:
            self._finished(task)

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items gave {len(outcomes)} outcomes")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            self._next()
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._next()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class KeyedBatcher(Generic[Key, Item, Result]):
    """A `Batcher` per key, made on first use: items of different keys (tenants, whose statements
    run under different settings) never share a batch."""

    def __init__(self, run: KeyedRun[Key, Item, Result], *, in_flight: int = 2, max_size: int = 64) -> None:
        self._run = run
        self._in_flight = in_flight
        self._max_size = max_size
        self._batchers: dict[Key, Batcher[Item, Result]] = {}

    async def submit(self, key: Key, item: Item) -> Result:
        batcher = self._batchers.get(key)
        if batcher is None:
            run = functools.partial(self._run, key)
            batcher = Batcher(run, in_flight=self._in_flight, max_size=self._max_size)
            self._batchers[key] = batcher
        return await batcher.submit(item)
