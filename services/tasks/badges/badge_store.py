"""SQL of badges and member_badges. Every function runs on a connection inside a tenant
transaction (row-level security scopes it; the tenant is passed only for inserts)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class BadgeRow:
    badge_id: str
    display_name: str
    description: str
    create_time: dt.datetime


@dataclass(frozen=True)
class MemberBadgeRow:
    badge_id: str
    member_id: str
    display_name: str
    source: str
    award_time: dt.datetime


async def insert_badge(
    conn: Connection, tenant_id: str, badge_id: str, display_name: str, description: str
) -> None:
    """Writes the badge unless one of that id exists (`badge` then tells what it holds)."""
    await conn.execute(
        """INSERT INTO tasks.badges (tenant_id, badge_id, display_name, description) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, badge_id) DO NOTHING""",
        tenant_id,
        badge_id,
        display_name,
        description,
    )


async def badge(conn: Connection, badge_id: str) -> BadgeRow | None:
    row = await conn.fetchrow(
        "SELECT badge_id, display_name, description, create_time FROM tasks.badges WHERE badge_id = $1",
        badge_id,
    )
    return None if row is None else BadgeRow(**dict(row))


async def badges(conn: Connection, after: str, limit: int) -> list[BadgeRow]:
    rows = await conn.fetch(
        """SELECT badge_id, display_name, description, create_time FROM tasks.badges
           WHERE badge_id > $1 ORDER BY badge_id LIMIT $2""",
        after,
        limit,
    )
    return [BadgeRow(**dict(r)) for r in rows]


async def existing(conn: Connection, badge_ids: Sequence[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT badge_id FROM tasks.badges WHERE badge_id = ANY($1::text[])", list(badge_ids)
    )
    return {r["badge_id"] for r in rows}


async def award(
    conn: Connection, tenant_id: str, member_id: str, badge_ids: Sequence[str], source: str, at: dt.datetime
) -> None:
    """Gives the member each badge they do not hold yet (held once: the first award stays)."""
    await conn.execute(
        """INSERT INTO tasks.member_badges (tenant_id, member_id, badge_id, source, award_time)
           SELECT $1, $2, b, $4, $5 FROM unnest($3::text[]) AS b
           ON CONFLICT (tenant_id, member_id, badge_id) DO NOTHING""",
        tenant_id,
        member_id,
        list(badge_ids),
        source,
        at,
    )


async def member_badges(conn: Connection, member_id: str) -> list[MemberBadgeRow]:
    rows = await conn.fetch(
        """SELECT m.badge_id, m.member_id, b.display_name, m.source, m.award_time
           FROM tasks.member_badges m
           JOIN tasks.badges b ON b.tenant_id = m.tenant_id AND b.badge_id = m.badge_id
           WHERE m.member_id = $1 ORDER BY m.award_time, m.badge_id""",
        member_id,
    )
    return [MemberBadgeRow(**dict(r)) for r in rows]
