"""SQL of the tagging schema. Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import json

import asyncpg

from services.common.db import Connection
from services.tagging.model import Member, MemberInput, Profile

_MEMBER_COLUMNS = """member_id, gender, birthday, city, city_tier, register_time, register_channel,
    attributes::text AS attributes, revision, create_time, update_time"""

# An upsert whose content equals the stored row updates nothing, so a retried or duplicated call
# leaves revision and update_time alone; RETURNING is then empty and the row is read afterwards.
_UPSERT = f"""
INSERT INTO tagging.members AS m
    (tenant_id, member_id, gender, birthday, city, city_tier, register_time, register_channel, attributes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
ON CONFLICT (tenant_id, member_id) DO UPDATE SET
    gender = EXCLUDED.gender,
    birthday = EXCLUDED.birthday,
    city = EXCLUDED.city,
    city_tier = EXCLUDED.city_tier,
    register_time = EXCLUDED.register_time,
    register_channel = EXCLUDED.register_channel,
    attributes = EXCLUDED.attributes,
    revision = m.revision + 1,
    update_time = now()
WHERE (m.gender, m.birthday, m.city, m.city_tier, m.register_time, m.register_channel, m.attributes)
    IS DISTINCT FROM (EXCLUDED.gender, EXCLUDED.birthday, EXCLUDED.city, EXCLUDED.city_tier,
                      EXCLUDED.register_time, EXCLUDED.register_channel, EXCLUDED.attributes)
RETURNING {_MEMBER_COLUMNS}
"""

_GET = f"SELECT {_MEMBER_COLUMNS} FROM tagging.members WHERE member_id = $1"


async def upsert_member(conn: Connection, tenant_id: str, member: MemberInput) -> Member:
    p = member.profile
    row = await conn.fetchrow(
        _UPSERT,
        tenant_id,
        member.member_id,
        int(p.gender),
        p.birthday,
        p.city,
        int(p.city_tier),
        p.register_time,
        p.register_channel,
        json.dumps(member.attributes, separators=(",", ":"), sort_keys=True),
    )
    if row is None:
        row = await conn.fetchrow(_GET, member.member_id)
    assert row is not None, "upsert left no row"
    return _member(row)


async def get_member(conn: Connection, member_id: str) -> Member | None:
    row = await conn.fetchrow(_GET, member_id)
    return None if row is None else _member(row)


def _member(row: asyncpg.Record) -> Member:
    return Member(
        member_id=row["member_id"],
        profile=Profile(
            gender=row["gender"],
            birthday=row["birthday"],
            city=row["city"],
            city_tier=row["city_tier"],
            register_time=row["register_time"],
            register_channel=row["register_channel"],
        ),
        attributes=json.loads(row["attributes"]),
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )
