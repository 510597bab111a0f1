"""The asyncpg pool and tenant-scoped transactions.

Every query of a request runs inside `Database.transaction(tenant_id)`, which switches to the
unprivileged `memberops_app` role and sets `memberops.tenant_id` for that transaction only. The
row-level security policies of every table compare against that setting, so a query that forgets
its tenant filter still sees only its own tenant's rows, even when the pool logs in as a superuser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

APP_ROLE = "memberops_app"
TENANT_SETTING = "memberops.tenant_id"

_ENTER_TENANT = f"SELECT set_config('role', '{APP_ROLE}', true), set_config('{TENANT_SETTING}', $1, true)"


# What store functions receive: a pooled connection inside a tenant transaction.
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.pool.PoolConnectionProxy


async def _reset_if_left_in_transaction(conn: asyncpg.Connection) -> None:
    """Everything the services set is local to a transaction (`set_config(..., true)`, `SET LOCAL`,
    transaction advisory locks, cursors), so a connection returned after its transaction ended holds
    no state and skips asyncpg's reset query, a round trip on every request; one returned inside a
    transaction (a cancelled call) is reset in full."""
    if conn.is_in_transaction():
        await conn.reset()


class Database:
    """A pool plus the one way the services use it: a transaction under one tenant."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> Database:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={"application_name": "memberops"},
            reset=_reset_if_left_in_transaction,
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self, tenant_id: str, *, readonly: bool = False) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction(readonly=readonly):
            await conn.execute(_ENTER_TENANT, tenant_id)
            yield conn
