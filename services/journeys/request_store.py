"""The first answer of each JourneyService request id (`journeys.journey_requests`, migration 0007)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.db import Connection
from runtime.errors import AlreadyExists


@dataclass(frozen=True)
class RequestRow:
    method: str
    request_hash: str
    journey_key: str
    version: int


async def lock(conn: Connection, tenant_id: str, request_id: str) -> None:
    """Serialises the requests of one tenant's id until the transaction ends (the primary key, which
    starts with the tenant, backs it)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        "\x1f".join(("journey-request", tenant_id, request_id)),
    )


async def find(conn: Connection, tenant_id: str, request_id: str) -> RequestRow | None:
    row = await conn.fetchrow(
        """SELECT method, request_hash, journey_key, version FROM journeys.journey_requests
           WHERE tenant_id = $1 AND request_id = $2""",
        tenant_id,
        request_id,
    )
    return None if row is None else RequestRow(**dict(row))


async def record(conn: Connection, tenant_id: str, request_id: str, answer: RequestRow) -> None:
    await conn.execute(
        """INSERT INTO journeys.journey_requests (tenant_id, request_id, method, request_hash, journey_key,
                                                  version)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        tenant_id,
        request_id,
        answer.method,
        answer.request_hash,
        answer.journey_key,
        answer.version,
    )


@dataclass(frozen=True)
class Move:
    """The request id of a lifecycle call (activate, pause, resume, archive), which
    `states.transition` looks up and records in the transaction that moves the journey."""

    tenant_id: str
    request_id: str
    method: str
    request_hash: str
    journey_key: str

    async def first(self, conn: Connection) -> int | None:
        await lock(conn, self.tenant_id, self.request_id)
        found = await find(conn, self.tenant_id, self.request_id)
        if found is None:
            return None
        if (found.method, found.request_hash) != (self.method, self.request_hash):
            raise AlreadyExists(f"request_id {self.request_id!r} was used for a different request")
        return found.version

    async def record(self, conn: Connection, live_version: int) -> None:
        answer = RequestRow(self.method, self.request_hash, self.journey_key, live_version)
        await record(conn, self.tenant_id, self.request_id, answer)
