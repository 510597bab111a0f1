"""Start-up and shutdown shared by the three services, so each `server.py` only wires its parts.

`start` is what tests call (port 0, in-process); `main` is what `python -m services.X.server` runs.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from grpc_health.v1 import health, health_pb2

from runtime import logs, migrations, observability
from runtime.auth import TokenAuthenticator
from runtime.config import Settings
from runtime.db import STARVED_AFTER_SECONDS, Database
from runtime.grpc_server import GrpcServer, ServiceBinding, serve_until_signal
from runtime.logs import get_logger

log = get_logger("memberops.app")


@dataclass(frozen=True)
class Wiring:
    """What a service builds from its database and tenants: its gRPC services and background loops."""

    bindings: Sequence[ServiceBinding]
    # Run from start to stop beside the server (e.g. a sweeper); cancelled when it stops.
    background: Sequence[Callable[[], Awaitable[None]]] = ()
    # Run once the server and the background loops have stopped (e.g. closing channels to peers).
    closers: Sequence[Callable[[], Awaitable[None]]] = ()


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    # The PostgreSQL schema the service owns and the folder of its migrations; None if it has no tables.
    schema: str | None
    migrations_dir: Path | None
    # Builds the service from its pool (None without a schema), every configured tenant and the
    # settings (a service calling its peers finds their addresses and the tenants' tokens there).
    wire: Callable[[Database | None, frozenset[str], Settings], Wiring]
    address: Callable[[Settings], str]
    # Runs once after migrations with the database and every configured tenant (e.g. seeding).
    prepare: Callable[[Database, frozenset[str]], Awaitable[None]] | None = None


@dataclass
class RunningService:
    server: GrpcServer
    db: Database | None
    background: Sequence[Callable[[], Awaitable[None]]] = ()
    closers: Sequence[Callable[[], Awaitable[None]]] = ()
    # The health service names a starved pool is reported on ("" and each service's).
    health_names: Sequence[str] = ("",)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, address: str) -> int:
        port = await self.server.start(address)
        loops = list(self.background)
        if self.db is not None:
            db, servicer, names = self.db, self.server.health, self.health_names
            loops.append(lambda: watch_pool(db, servicer, names))
        self._tasks = [asyncio.create_task(_logged(loop)) for loop in loops]
        return port

    async def stop(self, grace: float = 0) -> None:
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for close in self.closers:
            await close()
        if self.db is not None:
            await self.db.close()


async def _logged(loop: Callable[[], Awaitable[None]]) -> None:
    """A background loop that dies is logged (and the service keeps serving), never silently lost."""
    try:
        await loop()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background loop failed", loop=getattr(loop, "__qualname__", repr(loop)))


# How often a service with a database checks that its pool hands out connections.
POOL_WATCH_SECONDS = 1.0


async def watch_pool(
    db: Database,
    servicer: health.aio.HealthServicer,
    names: Sequence[str],
    *,
    every: float = POOL_WATCH_SECONDS,
    starved_after: float = STARVED_AFTER_SECONDS,
) -> None:
    """Health says NOT_SERVING while the pool cannot hand out a connection within `starved_after`,
    and SERVING again once it can: a server whose every call would wait on the pool is not serving,
    whatever its gRPC port says, and a load balancer should send the calls elsewhere (issue 17: ten
    unread exports held every connection while health said SERVING). After shutdown begins the
    health servicer ignores both."""
    serving = True
    while True:
        starved = await db.starved(starved_after)
        if starved == serving:
            serving = not starved
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            log.warning("database pool", serving=serving, starved_after_seconds=starved_after)
            for name in names:
                await servicer.set(name, status)
        await asyncio.sleep(every)


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
        db = await Database.connect(
            dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max, name=definition.name
        )
    tenants = frozenset(tokens.values())
    if db is not None and definition.prepare is not None:
        await definition.prepare(db, tenants)
    wiring = definition.wire(db, tenants, settings)
    server = GrpcServer(
        wiring.bindings, TokenAuthenticator(tokens), observability.server_interceptors(definition.name)
    )
    names = ("", *(binding.full_name for binding in wiring.bindings))
    return RunningService(server, db, wiring.background, wiring.closers, health_names=names)


async def start(definition: ServiceDefinition, settings: Settings, address: str) -> RunningService:
    running = await build(definition, settings)
    await running.start(address)
    return running


# Allocations between gen-0 collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Moves what start-up built out of the collector's sight and collects the young generation
    less often. A call allocates a few hundred tracked objects (futures, tasks, frames), so at the
    default threshold a busy server collects many times a second, each time walking the modules
    and the wiring too; in `bench_points` this gave 3-10 % more EarnPoints a second and a lower
    p99. The older generations keep CPython's ratios (10, 10), so cycles (the tracebacks of failed
    calls) are still collected, a little later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


async def _serve(definition: ServiceDefinition, settings: Settings) -> None:
    running = await build(definition, settings)
    tune_gc()
    await serve_until_signal(running, definition.address(settings), settings.shutdown_grace_seconds)


def main(definition: ServiceDefinition) -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level, service=definition.name)
    observability.start(definition.name, settings)
    asyncio.run(_serve(definition, settings))
