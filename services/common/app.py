"""Start-up and shutdown shared by the three services, so each `server.py` only wires its parts.

`start` is what tests call (port 0, in-process); `main` is what `python -m services.X.server` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from services.common import logs, migrations
from services.common.auth import TokenAuthenticator
from services.common.config import Settings
from services.common.db import Database
from services.common.grpc_server import GrpcServer, ServiceBinding, serve_until_signal


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    # The PostgreSQL schema the service owns and the folder of its migrations; None if it has no tables.
    schema: str | None
    migrations_dir: Path | None
    bindings: Callable[[Database | None], Sequence[ServiceBinding]]
    address: Callable[[Settings], str]
    # Runs once after migrations with the database and every configured tenant (e.g. seeding).
    prepare: Callable[[Database, frozenset[str]], Awaitable[None]] | None = None


@dataclass
class RunningService:
    server: GrpcServer
    db: Database | None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 0) -> None:
        await self.server.stop(grace)
        if self.db is not None:
            await self.db.close()


async def migrate(dsn: str, definition: ServiceDefinition) -> list[int]:
    """Applies the service's migrations on a connection of its own (outside the request pool)."""
    if definition.schema is None or definition.migrations_dir is None:
        return []
    conn = await asyncpg.connect(dsn)
    try:
        return await migrations.migrate(conn, definition.schema, migrations.load(definition.migrations_dir))
    finally:
        await conn.close()


async def build(definition: ServiceDefinition, settings: Settings) -> RunningService:
    """Migrates, opens the pool and builds the server, without binding a port yet."""
    tokens = settings.require_tokens()
    db: Database | None = None
    if definition.schema is not None:
        dsn = settings.require_database()
        await migrate(dsn, definition)
        db = await Database.connect(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        if definition.prepare is not None:
            await definition.prepare(db, frozenset(tokens.values()))
    server = GrpcServer(definition.bindings(db), TokenAuthenticator(tokens))
    return RunningService(server, db)


async def start(definition: ServiceDefinition, settings: Settings, address: str) -> RunningService:
    running = await build(definition, settings)
    await running.server.start(address)
    return running


async def _serve(definition: ServiceDefinition, settings: Settings) -> None:
    running = await build(definition, settings)
    try:
        await serve_until_signal(
            running.server, definition.address(settings), settings.shutdown_grace_seconds
        )
    finally:
        if running.db is not None:
            await running.db.close()


def main(definition: ServiceDefinition) -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service=definition.name)
    asyncio.run(_serve(definition, settings))
