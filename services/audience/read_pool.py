"""Where audience reads that may lag a little go: DATABASE_READ_URL's pool when it is set (a read
replica of the primary), else the service's own.

What goes there: evaluations (counts, previews, member pages, exports, membership checks answered
by a statement) and breakdowns, which read tagging's published views and may be a moment behind
the primary, as a replica is. What never does: audience definitions (the service's own writes, which
a caller reads right after making them: loaded from the primary, see `Evaluator.load(on_replica=True)`),
the dynamic-audience maintainer and its membership index, snapshots and anything else that writes.

The pool is opened on first use, so a replica that is down does not stop the service: the reads
that go there answer UNAVAILABLE until it answers, the rest serves.
"""

from __future__ import annotations

import asyncio

import asyncpg

from runtime.db import Database
from runtime.errors import Unavailable

# Connections of the read pool (the tenants' bound reading pools come on top, as on the primary).
READ_POOL_MAX = 10


class ReadPool:
    def __init__(self, primary: Database, url: str = "", max_size: int = READ_POOL_MAX) -> None:
        self._primary = primary
        self._url = url
        self._max_size = max_size
        self._replica: Database | None = None
        self._opening = asyncio.Lock()

    @property
    def separate(self) -> bool:
        """Whether reads go elsewhere than the primary (DATABASE_READ_URL is set)."""
        return bool(self._url)

    async def database(self) -> Database:
        """The database reads go to: the replica's, opened on first use, or the primary."""
        if not self._url:
            return self._primary
        if self._replica is None:
            async with self._opening:
                if self._replica is None:
                    self._replica = await self._connect()
        return self._replica

    async def _connect(self) -> Database:
        try:
            return await Database.connect(
                self._url, min_size=1, max_size=self._max_size, name="audience-replica"
            )
        except (OSError, asyncpg.PostgresError) as error:
            raise Unavailable(f"the read replica (DATABASE_READ_URL) did not answer: {error}") from error

    async def close(self) -> None:
        if self._replica is not None:
            await self._replica.close()
            self._replica = None
