"""SQL of tagging.members: one member at a time, batch imports, and the table's statistics after
one grows. Every function runs on a connection already inside a tenant transaction, except
`analyze_members_if_grown`, which runs as the table's owner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from runtime.db import Connection
from services.tagging.domain import Contact, Member, MemberInput, Profile

_MEMBER_COLUMNS = """member_id, gender, birthday, city, city_tier, register_time, register_channel,
    nickname, level, phone, email, preferred_channel, opted_out_channels, time_zone,
    wecom_external_userid, wecom_staff_userid,
    attributes::text AS attributes, revision, create_time, update_time"""

_MEMBER_FIELDS = """gender, birthday, city, city_tier, register_time, register_channel, nickname, level,
    phone, email, preferred_channel, opted_out_channels, time_zone, wecom_external_userid,
    wecom_staff_userid, attributes"""

# The exclusion constraint keeping a WeCom external contact one member's (migration 0022).
_WECOM_CONSTRAINT = "members_wecom_external_userid"


class WeComContactTaken(Exception):
    """Another member of the tenant is the WeCom external contact given. The statement failed, so
    the caller's transaction is aborted; `wecom_clash` (in a new one) names the row."""


def _incoming(field: str) -> str:
    """The value an upsert stores in `field`. An empty level keeps the stored one: the level may be
    the tasks service's to write (UpdateMember), and a backend replacing the rest of the member
    without it must not clear it."""
    if field == "level":
        return "COALESCE(NULLIF(EXCLUDED.level, ''), m.level)"
    return f"EXCLUDED.{field}"


_FIELD_NAMES = [f.strip() for f in _MEMBER_FIELDS.split(",")]
# An upsert whose content equals the stored row updates nothing, so a retried or duplicated call
# leaves revision and update_time alone; RETURNING is then empty and the row is read afterwards.
# UpsertMember and ImportMembers share this clause, so both follow exactly the same rules.
_UPSERT_ON_CONFLICT = f"""
ON CONFLICT (tenant_id, member_id) DO UPDATE SET
    ({_MEMBER_FIELDS}) = ROW({", ".join(_incoming(f) for f in _FIELD_NAMES)}),
    revision = m.revision + 1,
    update_time = now()
WHERE ({", ".join(f"m.{f}" for f in _FIELD_NAMES)})
    IS DISTINCT FROM ({", ".join(_incoming(f) for f in _FIELD_NAMES)})"""


def _member_no(member_id: str) -> str:
    """The number an upsert proposes: the stored member's own (the update keeps it), else the next.
    A default would draw a number for every row proposed, so re-importing a million existing members
    would spend a million numbers of the 2^32 the bitmaps hold. The stored row is locked (key share)
    so an erasure that would move its number to a pseudonym (erasure_store) cannot slip in between:
    the erasure waits, or finished first and this reads no row."""
    return f"""coalesce((SELECT e.member_no FROM tagging.members e
                  WHERE e.tenant_id = $1 AND e.member_id = {member_id} FOR KEY SHARE),
                 nextval('tagging.member_numbers'))"""


_UPSERT = f"""
INSERT INTO tagging.members AS m (tenant_id, member_id, {_MEMBER_FIELDS}, member_no)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18::jsonb,
        {_member_no("$2")})
{_UPSERT_ON_CONFLICT}
RETURNING {_MEMBER_COLUMNS}
"""

_GET_MEMBER = f"SELECT {_MEMBER_COLUMNS} FROM tagging.members WHERE member_id = $1"


def _member_values(member: MemberInput) -> tuple[Any, ...]:
    """member_id, then the columns of _MEMBER_FIELDS in order: one conversion for upsert and import."""
    p, c = member.profile, member.contact
    return (
        member.member_id,
        int(p.gender),
        p.birthday,
        p.city,
        int(p.city_tier),
        p.register_time,
        p.register_channel,
        p.nickname,
        p.level,
        c.phone,
        c.email,
        int(c.preferred_channel),
        [int(ch) for ch in c.opted_out_channels],
        c.time_zone,
        c.wecom_external_userid,
        c.wecom_staff_userid,
        json.dumps(member.attributes, separators=(",", ":"), sort_keys=True),
    )


async def upsert_member(conn: Connection, tenant_id: str, member: MemberInput) -> tuple[Member, bool]:
    """Stores the member; returns it and whether anything changed. Raises WeComContactTaken."""
    try:
        row = await conn.fetchrow(_UPSERT, tenant_id, *_member_values(member))
    except asyncpg.ExclusionViolationError as error:
        _raise_if_wecom(error)
        raise
    changed = row is not None
    if row is None:
        row = await conn.fetchrow(_GET_MEMBER, member.member_id)
    assert row is not None, "upsert left no row"
    return _member(row), changed


async def get_member(conn: Connection, member_id: str) -> Member | None:
    row = await conn.fetchrow(_GET_MEMBER, member_id)
    return None if row is None else _member(row)


async def lock_member(conn: Connection, member_id: str) -> Member | None:
    row = await conn.fetchrow(f"{_GET_MEMBER} FOR UPDATE", member_id)
    return None if row is None else _member(row)


async def get_members(conn: Connection, member_ids: Sequence[str]) -> list[Member]:
    """The members of these ids that exist, in no particular order."""
    rows = await conn.fetch(
        f"SELECT {_MEMBER_COLUMNS} FROM tagging.members WHERE member_id = ANY($1::text[])", member_ids
    )
    return [_member(row) for row in rows]


async def missing_members(conn: Connection, member_ids: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT member_id FROM tagging.members WHERE member_id = ANY($1::text[])", member_ids
    )
    return set(member_ids) - {r["member_id"] for r in rows}


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
            nickname=row["nickname"],
            level=row["level"],
        ),
        attributes=json.loads(row["attributes"]),
        contact=Contact(
            phone=row["phone"],
            email=row["email"],
            preferred_channel=row["preferred_channel"],
            opted_out_channels=tuple(row["opted_out_channels"]),
            time_zone=row["time_zone"],
            wecom_external_userid=row["wecom_external_userid"],
            wecom_staff_userid=row["wecom_staff_userid"],
        ),
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


# A batch that adds at least this many members, and a tenth of the table, has the members table
# analysed before its real-time refresh (see `analyze_members_if_grown`).
ANALYZE_AFTER_ROWS = 1000


async def analyze_members_if_grown(pool: asyncpg.Pool, added: int) -> bool:
    """Refreshes the members table's statistics when `added` new rows are a tenth of it or more.

    The real-time refresh that follows an import at once is planned on the statistics of before
    it: for a table that just grew several-fold they say "a few rows", and a refresh planned on
    them ran for minutes (a nested loop over a scan). Autovacuum analyses at the same 10 % growth,
    but a minute later. Runs outside any tenant transaction, as the login role, which owns the table.
    """
    if added < ANALYZE_AFTER_ROWS:
        return False
    known = await pool.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'tagging.members'::regclass")
    if known is not None and known >= 0 and added < 0.1 * known:
        return False
    await pool.execute("ANALYZE tagging.members")
    return True


_IMPORT_TABLE = "member_import"
_IMPORT_COLUMNS = ["member_id", *(f.strip() for f in _MEMBER_FIELDS.split(","))]
# The column types come from tagging.members itself, so the COPY target cannot drift from it.
_CREATE_IMPORT_TABLE = f"""CREATE TEMP TABLE {_IMPORT_TABLE} ON COMMIT DROP AS
    SELECT {", ".join(_IMPORT_COLUMNS)} FROM tagging.members WITH NO DATA"""
# Rows go in member id order, so two imports of overlapping batches lock keys in the same order
# and wait for each other instead of deadlocking (the number is drawn after the sort, so new members
# of a batch are numbered in id order).
_IMPORT_UPSERT = f"""
INSERT INTO tagging.members AS m (tenant_id, member_id, {_MEMBER_FIELDS}, member_no)
SELECT $1, {", ".join(f"s.{c}" for c in _IMPORT_COLUMNS)}, {_member_no("s.member_id")}
FROM pg_temp.{_IMPORT_TABLE} s ORDER BY s.member_id
{_UPSERT_ON_CONFLICT}
RETURNING member_id, revision
"""


async def import_members(
    conn: Connection, tenant_id: str, members: Sequence[MemberInput]
) -> list[tuple[str, int]]:
    """Upserts a batch with UpsertMember's rules: COPY into a temporary table, then one INSERT … SELECT.

    Returns (member_id, revision) of the members created or changed, by member id. Member ids
    must be unique within the batch (one statement cannot update a row twice).
    """
    await conn.execute(_CREATE_IMPORT_TABLE)
    await conn.copy_records_to_table(
        _IMPORT_TABLE, records=[_member_values(m) for m in members], columns=_IMPORT_COLUMNS
    )
    try:
        rows = await conn.fetch(_IMPORT_UPSERT, tenant_id)
    except asyncpg.ExclusionViolationError as error:
        _raise_if_wecom(error)
        raise
    return sorted((row["member_id"], row["revision"]) for row in rows)


def _raise_if_wecom(error: asyncpg.ExclusionViolationError) -> None:
    # The error's detail names the value; it is not passed on (logs carry no personal identifiers).
    if error.constraint_name == _WECOM_CONSTRAINT:
        raise WeComContactTaken() from None


async def wecom_clash(conn: Connection, members: Sequence[MemberInput]) -> tuple[int, str] | None:
    """The index in `members` of the first whose WeCom external_userid a stored member outside
    `members` holds, and that member's id; None when none does (the holder changed since)."""
    given = [(i, m) for i, m in enumerate(members) if m.contact.wecom_external_userid]
    row = await conn.fetchrow(
        """SELECT b.n, m.member_id
           FROM unnest($1::int[], $2::text[], $3::text[]) AS b(n, member_id, external)
           JOIN tagging.members m ON m.wecom_external_userid = b.external AND m.wecom_external_userid <> ''
           WHERE m.member_id <> b.member_id AND m.member_id <> ALL($4::text[])
           ORDER BY b.n LIMIT 1""",
        [i for i, _ in given],
        [m.member_id for _, m in given],
        [m.contact.wecom_external_userid for _, m in given],
        [m.member_id for m in members],
    )
    return None if row is None else (row["n"], row["member_id"])
