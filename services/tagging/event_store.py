"""SQL of behaviour events: new ones inserted with their feed entries in one statement.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

from runtime import tracing
from runtime.db import Connection
from services.tagging.domain import BehaviorEvent, FeedKind

_INSERT_EVENTS = """
WITH recorded AS (
    INSERT INTO tagging.events
        (tenant_id, event_id, member_id, kind, occur_time, sku, category, brand, query, channel)
    SELECT $1, * FROM unnest($2::text[], $3::text[], $4::smallint[], $5::timestamptz[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
    ON CONFLICT (tenant_id, event_id) DO NOTHING
    RETURNING *
)
INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload, traceparent)
SELECT tenant_id, $11, member_id, event_id,
       jsonb_build_object('event_id', event_id, 'member_id', member_id, 'kind', kind,
                          'occur_time', occur_time, 'sku', sku, 'category', category,
                          'brand', brand, 'query', query, 'channel', channel),
       $12
FROM recorded
ORDER BY occur_time, event_id
"""


async def insert_events(conn: Connection, tenant_id: str, events: list[BehaviorEvent]) -> int:
    """Inserts the events not seen before, each with its feed entry; returns how many were new."""
    status = await conn.execute(
        _INSERT_EVENTS,
        tenant_id,
        [e.event_id for e in events],
        [e.member_id for e in events],
        [int(e.kind) for e in events],
        [e.occur_time for e in events],
        [e.sku for e in events],
        [e.category for e in events],
        [e.brand for e in events],
        [e.query for e in events],
        [e.channel for e in events],
        int(FeedKind.EVENT_RECORDED),
        # The recording call's trace context: a journey the event starts continues its trace.
        tracing.traceparent(),
    )
    return int(status.rsplit(" ", 1)[-1])
