"""A stand-in read replica for the DATABASE_READ_URL test: a second database on the session's
cluster with tagging's and audience's schemas, whose members are not the primary's. An evaluation's
answer then says which database it read: the primary's members or the stand-in's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from runtime import app
from services.audience import server as audience_server
from services.tagging import server as tagging_server


def with_database(dsn: str, database: str) -> str:
    """`dsn` naming another database of the same cluster."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@asynccontextmanager
async def stand_in(dsn: str) -> AsyncIterator[str]:
    """A fresh database beside `dsn`'s, migrated for tagging and audience; its DSN. Dropped after."""
    database = f"memberops_read_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {database}")
        read_dsn = with_database(dsn, database)
        for definition in (tagging_server.DEFINITION, audience_server.DEFINITION):
            await app.migrate(read_dsn, definition)
        yield read_dsn
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()
