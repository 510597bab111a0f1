"""SQL of tagging.feed: entries appended in the transaction of the change they record, and read
back once their transaction has its position (runtime/outbox.py). Every function runs on a
connection already inside a tenant transaction. An entry written inside a traced call keeps that
call's trace context (`traceparent`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from runtime import outbox, tracing
from runtime.db import Connection
from services.tagging.domain import FeedEntry, FeedKind


async def append_feed(
    conn: Connection, tenant_id: str, kind: FeedKind, member_id: str, subject_id: str, payload: dict[str, Any]
) -> None:
    await conn.execute(
        """INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload, traceparent)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6)""",
        tenant_id,
        int(kind),
        member_id,
        subject_id,
        json.dumps(payload, separators=(",", ":"), default=str),
        tracing.traceparent(),
    )


_FEED_COLUMNS = "kind, member_id, subject_id, payload::text AS payload, create_time, traceparent"


async def read_feed(
    conn: Connection,
    after: outbox.Position | None,
    limit: int,
    kinds: Sequence[FeedKind] = (),
    upto: outbox.Position | None = None,
) -> list[FeedEntry]:
    """Settled entries after `after`; with `kinds`, only those kinds and none after `upto`."""
    if kinds:
        assert upto is not None
        rows = await outbox.read_settled(
            conn,
            "tagging.feed",
            _FEED_COLUMNS,
            after,
            limit,
            "kind = ANY($4::smallint[])",
            [[int(k) for k in kinds]],
            upto,
        )
    else:
        rows = await outbox.read_settled(conn, "tagging.feed", _FEED_COLUMNS, after, limit)
    return [
        FeedEntry(
            cursor=outbox.cursor_of(row),
            kind=FeedKind(row["kind"]),
            member_id=row["member_id"],
            subject_id=row["subject_id"],
            payload=json.loads(row["payload"]),
            create_time=row["create_time"],
            traceparent=row["traceparent"] or "",
        )
        for row in rows
    ]


async def append_feed_many(
    conn: Connection, tenant_id: str, kind: FeedKind, entries: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """Appends (member_id, subject_id, payload) entries in the order given, in one statement."""
    await conn.execute(
        """INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload, traceparent)
           SELECT $1, $2, e.member_id, e.subject_id, e.payload::jsonb, $6::text
           FROM unnest($3::text[], $4::text[], $5::text[])
                WITH ORDINALITY AS e(member_id, subject_id, payload, n)
           ORDER BY e.n""",
        tenant_id,
        int(kind),
        [member_id for member_id, _, _ in entries],
        [subject_id for _, subject_id, _ in entries],
        [json.dumps(payload, separators=(",", ":"), default=str) for _, _, payload in entries],
        tracing.traceparent(),
    )
