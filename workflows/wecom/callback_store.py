"""`journeys.wecom_callbacks` (migration 0011): WeCom's callbacks as the journeys service's endpoint
took them, until the sync's pull acts on them (SQL only; every function runs inside the caller's
tenant transaction)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.db import Connection

# How long processed rows are kept: far longer than WeCom repeats a callback (within seconds),
# short enough that a customer's WeCom id does not stay in rows that never resolved to a member.
RETENTION = dt.timedelta(days=30)


@dataclass(frozen=True)
class Callback:
    id: int
    event: str
    change_type: str
    external_userid: str
    userid: str
    body: Mapping[str, str]
    receive_time: dt.datetime


def digest(message: bytes) -> str:
    """What makes a repeat of a waiting callback the same row: the decrypted message's SHA-256 (it
    carries WeCom's CreateTime, in seconds)."""
    return hashlib.sha256(message).hexdigest()


async def insert(conn: Connection, tenant_id: str, message_digest: str, fields: Mapping[str, str]) -> bool:
    """Stores the callback; False when the same message waits already (WeCom repeating itself)."""
    stored = await conn.fetchval(
        """INSERT INTO journeys.wecom_callbacks
               (tenant_id, digest, event, change_type, external_userid, userid, body)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
           ON CONFLICT (tenant_id, digest) WHERE process_time IS NULL DO NOTHING
           RETURNING id""",
        tenant_id,
        message_digest,
        fields.get("Event", ""),
        fields.get("ChangeType", ""),
        fields.get("ExternalUserID", ""),
        fields.get("UserID", ""),
        json.dumps(dict(fields), ensure_ascii=False),
    )
    return stored is not None


async def unprocessed(conn: Connection, limit: int) -> list[Callback]:
    """The oldest `limit` callbacks the pull has not acted on."""
    rows = await conn.fetch(
        """SELECT id, event, change_type, external_userid, userid, body, receive_time
           FROM journeys.wecom_callbacks WHERE process_time IS NULL ORDER BY id LIMIT $1""",
        limit,
    )
    return [
        Callback(
            id=row["id"],
            event=row["event"],
            change_type=row["change_type"],
            external_userid=row["external_userid"],
            userid=row["userid"],
            body=json.loads(row["body"]),
            receive_time=row["receive_time"],
        )
        for row in rows
    ]


async def mark_processed(conn: Connection, callback_id: int, outcome: str, member_id: str = "") -> bool:
    """Notes what the pull did; False when the row was processed already (another attempt of the
    pull got there first), so the caller counts nothing twice."""
    status = await conn.execute(
        """UPDATE journeys.wecom_callbacks SET process_time = now(), outcome = $2, member_id = $3
           WHERE id = $1 AND process_time IS NULL""",
        callback_id,
        outcome,
        member_id,
    )
    return status.rsplit(" ", 1)[-1] != "0"


async def purge(conn: Connection, before: dt.datetime, limit: int = 1000) -> int:
    """Deletes up to `limit` rows processed before `before`; how many."""
    status = await conn.execute(
        """DELETE FROM journeys.wecom_callbacks WHERE id IN (
               SELECT id FROM journeys.wecom_callbacks
               WHERE process_time IS NOT NULL AND process_time < $1 ORDER BY process_time LIMIT $2)""",
        before,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])


# --- what the pull last saw in WeCom (journeys.wecom_seen_tags) --------------------------------

Seen = dict[str, set[str]]


async def seen(conn: Connection, external_userid: str, userid: str) -> Seen | None:
    """{dimension: values} the staff member's relationship held when the pull last looked, or None."""
    found = await conn.fetchval(
        "SELECT seen FROM journeys.wecom_seen_tags WHERE external_userid = $1 AND userid = $2",
        external_userid,
        userid,
    )
    if found is None:
        return None
    return {dimension: set(values) for dimension, values in json.loads(found).items()}


async def save_seen(
    conn: Connection,
    tenant_id: str,
    external_userid: str,
    userid: str,
    member_id: str,
    held: Seen,
    *,
    merge: bool = False,
) -> None:
    """Notes what the relationship holds now, the pull's next base: every pulled dimension (the
    pull, having read it), or with `merge` only those in `held`, keeping what was seen of the others
    (the push, which made WeCom hold exactly `held` in its dimensions)."""
    seen_after = "wecom_seen_tags.seen || EXCLUDED.seen" if merge else "EXCLUDED.seen"
    await conn.execute(
        f"""INSERT INTO journeys.wecom_seen_tags (tenant_id, external_userid, userid, member_id, seen)
            VALUES ($1, $2, $3, $4, $5::jsonb)
            ON CONFLICT (tenant_id, external_userid, userid) DO UPDATE SET
                member_id = EXCLUDED.member_id, seen = {seen_after}, update_time = now()""",
        tenant_id,
        external_userid,
        userid,
        member_id,
        json.dumps({dimension: sorted(values) for dimension, values in sorted(held.items())}),
    )
