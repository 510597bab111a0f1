"""The one way a test waits for something another task or process does: poll a condition.

The bound is there so a test that would hang fails instead, naming what never happened; it is
not a timing threshold, and a test never asserts how long the wait took. Waiting on a condition
instead of sleeping a fixed time makes a test as fast as the system and no slower on a busy
machine than it must be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Generous on purpose: a 2-core machine running the whole suite can be slow, never this slow.
WAIT_SECONDS = 60.0


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    within: float = WAIT_SECONDS,
    interval: float = 0.05,
) -> T:
    """Calls `probe` until it returns something true (a non-empty list, a found row, True; not
    None, False or empty) and returns that; fails naming `what` once `within` seconds pass without it."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"never {what} (waited {within:.0f} s; last saw {found!r})")
        await asyncio.sleep(interval)


async def until(condition: Callable[[], bool], what: str) -> None:
    """`eventually` for a condition read from memory (another task's progress), not a query."""

    async def probe() -> bool:
        return condition()

    await eventually(probe, what)
