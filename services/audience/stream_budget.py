"""A time budget for a server stream whose client stops reading (the gRPC side of `exports`).

grpc.aio resumes a streaming handler only once the message it yielded has been taken by the
transport, which waits on HTTP/2 flow control: a client that does not read leaves the handler
suspended at its `yield` for good. Nothing inside the handler runs then, so a timer armed at each
`yield` ends the call from outside: it sends DEADLINE_EXCEEDED (the client sees it after the
messages already on their way) and closes the source, so its buffered page is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import grpc

from runtime.logs import get_logger

log = get_logger("memberops.audience.streams")

T = TypeVar("T")


async def within_idle_budget(
    items: AsyncGenerator[T, None], context: Any, seconds: float, what: str
) -> AsyncIterator[T]:
    """`items` as they come, ending the call when one yielded item waits `seconds` to be taken."""
    loop = asyncio.get_running_loop()
    suspended = False
    timer: asyncio.TimerHandle | None = None
    ending: set[asyncio.Task[None]] = set()

    async def end() -> None:
        log.info("stream not read: ending it", what=what, idle_seconds=seconds)
        # The source is closed only while this handler waits at its `yield` (it cannot be
        # running then); abort's first step marks the call ended before it waits on the transport.
        if suspended:
            await items.aclose()
        with contextlib.suppress(Exception):  # AbortError, or the call ended meanwhile
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{what} was not read for {seconds:g} s: ended; start it again to read it",
            )

    def expire() -> None:
        task = loop.create_task(end())
        ending.add(task)
        task.add_done_callback(ending.discard)

    try:
        async for item in items:
            timer = loop.call_later(seconds, expire)
            suspended = True
            yield item
            suspended = False
            timer.cancel()
    finally:
        if timer is not None:
            timer.cancel()
        await items.aclose()
