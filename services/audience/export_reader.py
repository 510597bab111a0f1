"""An export's ids read from one ordered server-side cursor, with its connection given back
whenever the export would otherwise hold it while waiting on its client.

A cursor over the whole selection is the fast way to read it (one plan, one pass: about twice the
ids a second of keyset pages, which restart their joins at every page), but its transaction holds
a pooled connection for as long as it is open. So the cursor is opened under one of the
`ReadSlots` and closed (its transaction ended, connection and slot given back) as soon as another
export waits for a slot, or when its reader has waited `HOLD_SECONDS` on its client; the next page
then opens a new cursor after the last id read (the selection is ordered by member id, so nothing
is read twice or skipped). A reader that keeps up keeps its cursor to the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any

from runtime.db import Connection

if TYPE_CHECKING:
    from asyncpg.cursor import Cursor

# How long a reader may hold its cursor while waiting on its client, when no other export waits.
HOLD_SECONDS = 1.0


class ReadSlots:
    """The connections exports may hold at once, so that a burst of exports cannot take the pool
    from every other call. `contended`: another export waits for a slot."""

    def __init__(self, slots: int) -> None:
        self._free = asyncio.Semaphore(slots)
        self._waiting = 0

    @property
    def contended(self) -> bool:
        return self._waiting > 0

    async def __aenter__(self) -> None:
        self._waiting += 1
        try:
            await self._free.acquire()
        finally:
            self._waiting -= 1

    async def __aexit__(self, *exc: object) -> None:
        self._free.release()


# Declares the cursor on a connection inside a transaction, for the ids after the given one.
Declare = Callable[[Connection, str], Awaitable["Cursor[Any]"]]


class ExportReader:
    """Pages of member ids, in order, from a cursor opened and closed as the module says."""

    def __init__(
        self,
        slots: ReadSlots,
        transaction: Callable[[], AbstractAsyncContextManager[Connection]],
        declare: Declare,
        page_size: int,
    ) -> None:
        self._slots, self._transaction, self._declare = slots, transaction, declare
        self._page_size = page_size
        self._after = ""
        self._open: AsyncExitStack | None = None
        self._cursor: Cursor[Any] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def page(self) -> list[str]:
        """The next page; fewer than a page's ids at the end."""
        await self._closed_meanwhile()
        if self._cursor is None:
            await self._open_cursor()
        assert self._cursor is not None
        ids = [row["member_id"] for row in await self._cursor.fetch(self._page_size)]
        if ids:
            self._after = ids[-1]
        return ids

    async def before_waiting(self) -> None:
        """Called before the export hands a chunk to its client, which may take long: the cursor is
        closed now if another export waits for a slot, or after `HOLD_SECONDS` (see `after_waiting`)."""
        if self._open is None:
            return
        if self._slots.contended:
            await self.close()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HOLD_SECONDS, self._close_soon)

    def after_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def close(self, error: BaseException | None = None) -> None:
        """Ends the transaction, gives the connection and the slot back; harmless when closed.
        `error`: what ends the export, if anything did, so a transaction cut off in the middle of a
        fetch (a cancelled call) is rolled back and its connection reset, not committed."""
        self.after_waiting()
        opened, self._open, self._cursor = self._open, None, None
        if opened is not None:
            if error is None:
                await opened.aclose()
            else:
                await opened.__aexit__(type(error), error, error.__traceback__)
        await self._closed_meanwhile()

    def _close_soon(self) -> None:
        """From the timer, while the export waits at its `yield`, so it is not using the connection;
        it waits for this to finish before it reads again (`_closed_meanwhile`)."""
        self._timer = None
        if self._open is not None and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    async def _closed_meanwhile(self) -> None:
        closing, self._closing = self._closing, None
        if closing is not None and closing is not asyncio.current_task():
            await closing

    async def _open_cursor(self) -> None:
        opened = AsyncExitStack()
        try:
            await opened.enter_async_context(self._slots)
            conn = await opened.enter_async_context(self._transaction())
            self._cursor = await self._declare(conn, self._after)
        except BaseException:
            self._cursor = None
            await opened.aclose()
            raise
        self._open = opened
