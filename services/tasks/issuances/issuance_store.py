"""SQL of coupon issuances to an audience: the operation's row and the pages it has counted. Every
function runs on a connection inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class IssuanceRow:
    request_id: str
    template_id: str
    audience_id: str
    snapshot_id: str
    campaign: str
    arm: str
    members: int
    issued: int
    skipped: int
    out_of_stock: int
    done: bool
    create_time: dt.datetime
    update_time: dt.datetime
    # memberops.tasks.v1.CouponIssuanceEnd (Ended): 0 while it runs.
    ended: int


class Ended(enum.IntEnum):
    """How an operation ended (the numbers of memberops.tasks.v1.CouponIssuanceEnd)."""

    RUNNING = 0
    COMPLETED = 1
    TEMPLATE_RETIRED = 2
    VALIDITY_ENDED = 3


@dataclass(frozen=True)
class Counts:
    """What one page did."""

    issued: int = 0
    skipped: int = 0
    out_of_stock: int = 0


_COLUMNS = (
    "request_id, template_id, audience_id, snapshot_id, campaign, arm, members, issued, skipped, "
    "out_of_stock, done, create_time, update_time, ended"
)


async def insert(
    conn: Connection,
    tenant_id: str,
    request_id: str,
    template_id: str,
    audience_id: str,
    snapshot_id: str,
    campaign: str,
    arm: str,
    members: int,
) -> IssuanceRow | None:
    """The new operation (done at once when the snapshot is empty), or None when the request id
    is taken."""
    row = await conn.fetchrow(
        f"""INSERT INTO tasks.coupon_issuances (tenant_id, request_id, template_id, audience_id,
                                                snapshot_id, campaign, arm, members, done, ended)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint, $8::bigint = 0,
                    CASE WHEN $8::bigint = 0 THEN 1 ELSE 0 END)
            ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING {_COLUMNS}""",
        tenant_id,
        request_id,
        template_id,
        audience_id,
        snapshot_id,
        campaign,
        arm,
        members,
    )
    return None if row is None else IssuanceRow(**dict(row))


async def issuance(conn: Connection, request_id: str) -> IssuanceRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM tasks.coupon_issuances WHERE request_id = $1", request_id
    )
    return None if row is None else IssuanceRow(**dict(row))


async def count_page(
    conn: Connection, tenant_id: str, request_id: str, page: str, counts: Counts, ended: Ended
) -> IssuanceRow | None:
    """Adds the page's counts to the operation (done, and how, when `ended` is not RUNNING: the
    last page, or one that met the template's end), unless the page was counted before: then None,
    and nothing changes."""
    row = await conn.fetchrow(
        f"""WITH page AS (
                INSERT INTO tasks.coupon_issuance_pages (tenant_id, request_id, page)
                VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING request_id)
            UPDATE tasks.coupon_issuances AS i
            SET issued = issued + $4, skipped = skipped + $5, out_of_stock = out_of_stock + $6,
                done = done OR $7::smallint > 0, ended = CASE WHEN done THEN ended ELSE $7::smallint END,
                update_time = now()
            FROM page WHERE i.tenant_id = $1 AND i.request_id = page.request_id
            RETURNING {", ".join(f"i.{c}" for c in _COLUMNS.split(", "))}""",
        tenant_id,
        request_id,
        page,
        counts.issued,
        counts.skipped,
        counts.out_of_stock,
        int(ended),
    )
    return None if row is None else IssuanceRow(**dict(row))
