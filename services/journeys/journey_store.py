"""Journeys as the service shows them: a version of the definition with the journey's state, read
from the worker's schema (`journeys.definitions` and `journeys.journey_states`; a journey without a
state row is a draft). Writes of either table go through `workflows/journeys/store.py` and
`workflows/journeys/states.py`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection
from workflows.journeys import store
from workflows.journeys.definition import JourneyDefinition


@dataclass(frozen=True)
class JourneyRow:
    key: str
    version: int
    definition: JourneyDefinition
    create_time: dt.datetime
    latest_version: int
    state: str
    live_version: int
    state_time: dt.datetime | None


_COLUMNS = """d.journey_key, d.version, d.content::text AS content, d.format_version, d.create_time,
    (SELECT max(l.version) FROM journeys.definitions l
     WHERE l.tenant_id = d.tenant_id AND l.journey_key = d.journey_key) AS latest_version,
    coalesce(s.state, 'draft') AS state, coalesce(s.live_version, 0) AS live_version,
    s.update_time AS state_time
    FROM journeys.definitions d
    LEFT JOIN journeys.journey_states s ON s.tenant_id = d.tenant_id AND s.journey_key = d.journey_key"""


def _journey(row: asyncpg.Record) -> JourneyRow:
    return JourneyRow(
        key=row["journey_key"],
        version=row["version"],
        definition=store.stored(row).definition,
        create_time=row["create_time"],
        latest_version=row["latest_version"],
        state=row["state"],
        live_version=row["live_version"],
        state_time=row["state_time"],
    )


async def get_journey(conn: Connection, tenant_id: str, key: str, version: int) -> JourneyRow | None:
    """`version` of the journey (0: the latest), or None."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS}
            WHERE d.tenant_id = $1 AND d.journey_key = $2 AND ($3 = 0 OR d.version = $3)
            ORDER BY d.version DESC LIMIT 1""",
        tenant_id,
        key,
        version,
    )
    return None if row is None else _journey(row)


async def list_journeys(
    conn: Connection, tenant_id: str, state: str, after_key: str, limit: int
) -> list[JourneyRow]:
    """The latest version of each journey after `after_key`, by key, in `state` ('' for any)."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (d.journey_key) {_COLUMNS}
            WHERE d.tenant_id = $1 AND d.journey_key > $2
              AND ($3 = '' OR coalesce(s.state, 'draft') = $3)
            ORDER BY d.journey_key, d.version DESC LIMIT $4""",
        tenant_id,
        after_key,
        state,
        limit,
    )
    return [_journey(row) for row in rows]
