"""SQL of the bitmap index (bitmaps.py): a tenant's members, profile buckets and current tags read
grouped by value (PostgreSQL aggregates the member numbers, so Python handles one array per value,
not one row per member), tagging's feed of member and tag changes, and the rows those changes name.
Everything is read through tagging's published views; every function runs on a connection already
inside a tenant transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from runtime import outbox
from runtime.db import Connection

FEED = "tagging_read.feed"
# tagging's FeedKind values the index follows (services/tagging/domain.py).
MEMBER_CHANGED = 1
TAG_CHANGED = 5

# Profile fields kept as buckets -> their column of tagging_read.members, as text (enum-valued
# columns hold the enum's number).
BUCKET_COLUMNS: dict[str, str] = {
    "gender": "gender::text",
    "city_tier": "city_tier::text",
    "level": "level",
    "register_channel": "register_channel",
    "city": "city",
}
_FIELDS = list(BUCKET_COLUMNS)


async def feed_end(conn: Connection) -> outbox.Position | None:
    """The position of the newest readable entry of tagging's feed (None: it has none)."""
    return outbox.parse_cursor(await outbox.last_settled(conn, FEED) or "")


@dataclass(frozen=True)
class MemberChunk:
    """Members by number: `numbers` ascending, their ids concatenated in `ids`, `lengths` in bytes."""

    numbers: list[int]
    lengths: list[int]
    ids: bytes


async def member_chunk(conn: Connection, after: int, limit: int) -> MemberChunk | None:
    """The next `limit` members with a number above `after`, None when there are none."""
    row = await conn.fetchrow(
        """SELECT array_agg(member_no ORDER BY member_no) AS numbers,
                  array_agg(octet_length(member_id) ORDER BY member_no) AS lengths,
                  string_agg(member_id, '' ORDER BY member_no) AS ids
           FROM (SELECT member_no, member_id FROM tagging_read.members
                 WHERE member_no > $1 ORDER BY member_no LIMIT $2) s""",
        after,
        limit,
    )
    if row is None or row["numbers"] is None:
        return None
    return MemberChunk(row["numbers"], row["lengths"], row["ids"].encode())


async def profile_buckets(conn: Connection) -> AsyncIterator[tuple[str, str, list[int]]]:
    """(field, value as text, member numbers) of every bucketed field, in one scan of the members."""
    sets = ", ".join(f"({column})" for column in BUCKET_COLUMNS.values())
    values = ", ".join(f"{column} AS f{i}" for i, column in enumerate(BUCKET_COLUMNS.values()))
    grouping = ", ".join(BUCKET_COLUMNS.values())
    cursor = conn.cursor(
        f"""SELECT {values}, GROUPING({grouping}) AS g, array_agg(member_no) AS numbers
            FROM tagging_read.members GROUP BY GROUPING SETS ({sets})""",
        prefetch=16,
    )
    last = len(_FIELDS) - 1
    async for row in cursor:
        # GROUPING's bits are set for the columns a row is NOT grouped by, the first one highest.
        i = next(i for i in range(len(_FIELDS)) if not row["g"] & (1 << (last - i)))
        yield _FIELDS[i], row[f"f{i}"], row["numbers"]


async def current_tags(conn: Connection) -> AsyncIterator[tuple[str, str, list[int]]]:
    """(dimension, value, member numbers) of every tag value members hold now."""
    cursor = conn.cursor(
        """SELECT t.dimension, t.value, array_agg(m.member_no) AS numbers
           FROM tagging_read.current_member_tags t
           JOIN tagging_read.members m ON m.member_id = t.member_id
           GROUP BY t.dimension, t.value""",
        prefetch=16,
    )
    async for row in cursor:
        yield row["dimension"], row["value"], row["numbers"]


async def read_changes(
    conn: Connection, after: outbox.Position | None, limit: int, upto: outbox.Position
) -> list[asyncpg.Record]:
    """Member and tag changes after `after` up to `upto`, in feed order: `kind`, `member_id`,
    `tag_dimension` and `tag_value` (the value added or removed), `position`, `seq`."""
    return await outbox.read_settled(
        conn,
        FEED,
        "f.kind, f.member_id, f.tag_dimension, f.tag_value",
        after,
        limit,
        "f.kind = ANY($4::smallint[])",
        [[MEMBER_CHANGED, TAG_CHANGED]],
        upto,
    )


async def member_rows(conn: Connection, member_ids: Sequence[str]) -> list[asyncpg.Record]:
    """`member_id`, `member_no` and each bucketed field (as text) of the members that exist."""
    columns = ", ".join(f"{column} AS {name}" for name, column in BUCKET_COLUMNS.items())
    return await conn.fetch(
        f"""SELECT member_id, member_no, {columns} FROM tagging_read.members
            WHERE member_id = ANY($1::text[])""",
        list(member_ids),
    )


async def tags_of(
    conn: Connection, member_ids: Sequence[str], dimensions: Sequence[str]
) -> list[asyncpg.Record]:
    """For each (member, dimension) pair whose member exists: `member_id`, `dimension`,
    `member_no` and `tag_values`, the values the member holds now (empty when none)."""
    return await conn.fetch(
        """SELECT p.member_id, p.dimension, m.member_no,
                  ARRAY(SELECT t.value FROM tagging_read.current_member_tags t
                        WHERE t.member_id = p.member_id AND t.dimension = p.dimension) AS tag_values
           FROM unnest($1::text[], $2::text[]) AS p(member_id, dimension)
           JOIN tagging_read.members m ON m.member_id = p.member_id""",
        list(member_ids),
        list(dimensions),
    )


async def numbers(conn: Connection, member_ids: Sequence[str]) -> dict[str, int]:
    """member id -> member number, for the members that exist."""
    rows = await conn.fetch(
        "SELECT member_id, member_no FROM tagging_read.members WHERE member_id = ANY($1::text[])",
        list(member_ids),
    )
    return {row["member_id"]: row["member_no"] for row in rows}
