"""SQL of level benefit grants: the members to grant to, and one row per member, benefit and
period that makes each grant happen once. Runs inside tenant transactions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runtime.db import Connection
from runtime.erasure import PSEUDONYM_PREFIX


async def members_after(conn: Connection, base_code: str, after: str, limit: int) -> list[tuple[str, str]]:
    """(member, level code) of members with a points account, by member id after `after`: the
    members tasks knows (an erased member's pseudonym is none); a member never raised holds the
    base level."""
    rows = await conn.fetch(
        """SELECT a.member_id, coalesce(l.code, $1) AS code
           FROM tasks.accounts a
           LEFT JOIN tasks.member_levels l ON l.tenant_id = a.tenant_id AND l.member_id = a.member_id
           WHERE a.member_id > $2 AND NOT starts_with(a.member_id, $3)
           ORDER BY a.member_id LIMIT $4""",
        base_code,
        after,
        PSEUDONYM_PREFIX,
        limit,
    )
    return [(r["member_id"], r["code"]) for r in rows]


async def claim_grant(
    conn: Connection, tenant_id: str, member_id: str, benefit: str, period: str, template_id: str
) -> bool:
    """Takes the member's grant of `benefit` for `period`; False when it was granted before (a
    concurrent run waits here for the first to commit, then finds its row)."""
    taken = await conn.fetchval(
        """INSERT INTO tasks.level_benefit_grants (tenant_id, member_id, benefit, period, template_id)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true""",
        tenant_id,
        member_id,
        benefit,
        period,
        template_id,
    )
    return bool(taken)


async def issued(conn: Connection, member_id: str, benefit: str, period: str, code: str) -> None:
    await conn.execute(
        """UPDATE tasks.level_benefit_grants SET coupon_code = $4
           WHERE member_id = $1 AND benefit = $2 AND period = $3""",
        member_id,
        benefit,
        period,
        code,
    )


async def granted(
    conn: Connection, member_ids: Sequence[str], periods: Mapping[str, str]
) -> set[tuple[str, str]]:
    """(member, benefit) of these members already granted in `periods` (benefit -> period), so a
    daily run passes over them without a transaction each."""
    rows = await conn.fetch(
        """SELECT g.member_id, g.benefit FROM tasks.level_benefit_grants g
           JOIN unnest($2::text[], $3::text[]) AS p(benefit, period)
             ON p.benefit = g.benefit AND p.period = g.period
           WHERE g.member_id = ANY($1::text[])""",
        list(member_ids),
        list(periods),
        list(periods.values()),
    )
    return {(r["member_id"], r["benefit"]) for r in rows}
