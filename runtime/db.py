"""The asyncpg pool and tenant-scoped transactions.

Every query of a request runs inside `Database.transaction(tenant_id)`, which switches to the
unprivileged `memberops_app` role and sets `memberops.tenant_id` for that transaction only. The
row-level security policies of every table compare against that setting, so a query that forgets
its tenant filter still sees only its own tenant's rows, even when the pool logs in as a superuser.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal, TypeAlias

import asyncpg

from runtime.config import TENANT_ID

APP_ROLE = "memberops_app"
TENANT_SETTING = "memberops.tenant_id"
# Errors of a statement written for a group of calls (sign-ins, coupon issues) that the calls settle
# by going one by one: a request id met twice or taken meanwhile, and a conflict the database rolled
# back (a deadlock with another transaction); alone, each call gets its own answer.
GROUP_SETTLED_ALONE = (asyncpg.UniqueViolationError, asyncpg.TransactionRollbackError)

# How the statements of a transaction are planned (PostgreSQL's plan_cache_mode). "custom": with
# their actual arguments, every time, as compiled statements over a member filter or a window of
# unknown size need: after five runs PostgreSQL may switch a prepared statement to a generic plan,
# which then picks whole-table scans (measured: a 15 ms refresh of 600 members became 2 s).
# "generic": planned once per connection, for statements whose every plan is the same (one member's
# probes), where planning would cost more than running. "auto": PostgreSQL's default.
Plans = Literal["auto", "custom", "generic"]
_PLAN_MODES = {"custom": "force_custom_plan", "generic": "force_generic_plan"}


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


# Every Database not closed yet, for the pool gauges of /metrics (weak: one dropped unclosed goes).
OPEN: weakref.WeakSet[Database] = weakref.WeakSet()


def _usage(pools: list[asyncpg.Pool]) -> tuple[int, int, int]:
    """(in use, open, most) over `pools`."""
    size = sum(pool.get_size() for pool in pools)
    idle = sum(pool.get_idle_size() for pool in pools)
    return size - idle, size, sum(pool.get_max_size() for pool in pools)


# Connections of each tenant's read-only pool (`Database.reading`), opened on demand.
READING_POOL_SIZE = 4
# How long a trivial acquire may wait before the pool counts as starved (`Database.starved`).
STARVED_AFTER_SECONDS = 2.0


class Database:
    """A pool plus the two ways the services use it: a transaction under one tenant, and one
    read-only statement under one tenant on a connection that stays that tenant's."""

    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None, name: str = "") -> None:
        self.pool = pool
        self._dsn = dsn
        self._reading: dict[str, asyncpg.Pool] = {}
        self._reading_lock = asyncio.Lock()
        # The process part it serves (a service, "worker"), as Prometheus' pool gauges name it.
        self.name = name or "memberops"
        OPEN.add(self)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 10, name: str = "") -> Database:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={"application_name": "memberops"},
            reset=_reset_if_left_in_transaction,
        )
        return cls(pool, dsn, name)

    def usage(self) -> Iterator[tuple[str, int, int, int]]:
        """(pool, connections in use, open, most) of the request pool ("primary") and of the
        tenants' reading pools together ("reading"), read by the /metrics scrape
        (runtime/metrics.py) from its own thread: plain attribute reads, no await."""
        yield "primary", *_usage([self.pool])
        yield "reading", *_usage(list(self._reading.values()))

    async def starved(self, within: float = STARVED_AFTER_SECONDS) -> bool:
        """Whether the pool could not hand out a connection `within` seconds (or not at all: the
        database is gone), which is what the next request would meet; health reports it (see
        `app.watch_pool`). The connection is given straight back, unused."""
        try:
            async with self.pool.acquire(timeout=within):
                return False
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return True

    async def close(self) -> None:
        OPEN.discard(self)
        pools = [self.pool, *self._reading.values()]
        self._reading.clear()
        await asyncio.gather(*(pool.close() for pool in pools))

    @asynccontextmanager
    async def reading(self, tenant_id: str) -> AsyncIterator[Connection]:
        """A connection bound to `tenant_id` for its whole life, for one read-only statement per
        call on a hot path: the statement runs in its own implicit transaction, so the call pays one
        round trip, not the three of `transaction`. The connections come from a small pool of the
        tenant's own, whose sessions carry the role, the tenant, read-only transactions and generic
        plans (see `Plans`: statements that probe one member's rows) and are never handed to another
        tenant or to `transaction`."""
        pool = self._reading.get(tenant_id) or await self._reading_pool(tenant_id)
        async with pool.acquire() as conn:
            yield conn

    async def _reading_pool(self, tenant_id: str) -> asyncpg.Pool:
        if self._dsn is None:
            raise RuntimeError("a Database made from a pool has no DSN to open reading pools with")
        session = _session(tenant_id)
        async with self._reading_lock:
            if tenant_id not in self._reading:

                async def bind(conn: asyncpg.Connection) -> None:
                    await conn.execute(session)

                self._reading[tenant_id] = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=READING_POOL_SIZE,
                    server_settings={"application_name": "memberops-reading"},
                    init=bind,
                    reset=_rollback_if_left_in_transaction,
                )
            return self._reading[tenant_id]

    @asynccontextmanager
    async def transaction(
        self, tenant_id: str, *, readonly: bool = False, plans: Plans = "auto", snapshot: bool = False
    ) -> AsyncIterator[Connection]:
        """A transaction under `tenant_id`, opened in one round trip: BEGIN, the role, the tenant and
        the plan mode go to the server as one simple query, so a request that reads once pays three
        round trips, not four or five. `snapshot`: every statement sees the same data (REPEATABLE
        READ), for reads that must agree with each other."""
        opening = _opening(tenant_id, readonly=readonly, plans=plans, snapshot=snapshot)
        async with self.pool.acquire() as conn:
            try:
                await conn.execute(opening)
                yield conn
            except BaseException:
                await _rollback(conn)
                raise
            await conn.execute("COMMIT")


def _session(tenant_id: str) -> str:
    """The session settings of a connection bound to one tenant for good (`Database.reading`)."""
    _check_tenant(tenant_id)
    return (
        f"SET ROLE {APP_ROLE};\n"
        f"SELECT set_config('{TENANT_SETTING}', '{tenant_id}', false);\n"
        "SET default_transaction_read_only = on;\n"
        f"SET plan_cache_mode = {_PLAN_MODES['generic']}"
    )


async def _rollback_if_left_in_transaction(conn: asyncpg.Connection) -> None:
    """A bound connection holds its tenant in the session, which asyncpg's reset would clear, so
    it is only rolled back, should a caller have left a transaction open; a ROLLBACK leaves the
    session settings made outside any transaction as they are."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _check_tenant(tenant_id: str) -> None:
    if tenant_id and not TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"not a tenant id: {tenant_id!r}")


def _opening(tenant_id: str, *, readonly: bool, plans: Plans, snapshot: bool = False) -> str:
    """The statements that open a tenant transaction. A simple query carries no parameters, so the
    tenant is a literal; tenant ids are configuration and match `config.TENANT_ID` (letters, digits,
    `_` and `-`), which is checked here so nothing else can reach the text. '' binds no tenant, so
    row-level security shows nothing."""
    _check_tenant(tenant_id)
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ" if snapshot else "BEGIN"
    statements = [
        f"{begin} READ ONLY" if readonly else begin,
        f"SELECT set_config('role', '{APP_ROLE}', true), set_config('{TENANT_SETTING}', '{tenant_id}', true)",
    ]
    if plans in _PLAN_MODES:
        statements.append(f"SET LOCAL plan_cache_mode = {_PLAN_MODES[plans]}")
    return ";\n".join(statements)


async def _rollback(conn: Connection) -> None:
    """Ends a transaction that raised, as asyncpg's own transaction block does; a connection that
    cannot take the ROLLBACK (broken, or still busy with a cancelled query) is reset or discarded
    by the pool when it is released."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")


@asynccontextmanager
async def savepoint(conn: Connection) -> AsyncIterator[None]:
    """A block inside a tenant transaction whose writes are undone if it raises, while the
    transaction goes on. (asyncpg's own nested `conn.transaction()` refuses a transaction it did
    not start itself, as `Database.transaction` starts them.) Blocks may nest: each ROLLBACK TO or
    RELEASE names the innermost savepoint of the name."""
    await conn.execute("SAVEPOINT memberops_block")
    try:
        yield
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            await conn.execute("ROLLBACK TO SAVEPOINT memberops_block; RELEASE SAVEPOINT memberops_block")
        raise
    await conn.execute("RELEASE SAVEPOINT memberops_block")
