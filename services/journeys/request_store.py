"""The first answer of each JourneyService request id (`journeys.journey_requests`, migration 0007)."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.db import Connection


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
