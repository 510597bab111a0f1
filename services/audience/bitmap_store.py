"""SQL of the bitmap index (bitmaps.py): a tenant's members, profile buckets, current tags and
recency summaries read grouped by value (PostgreSQL aggregates the member numbers, so Python handles
one array per value, not one row per member), tagging's feed of member, fact and tag changes, and
the rows those changes name.
Everything is read through tagging's published views; every function runs on a connection already
inside a tenant transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from runtime import outbox
from runtime.db import Connection
from services.audience import fact_windows

FEED = "tagging_read.feed"
# tagging's FeedKind values the index follows (services/tagging/domain.py).
MEMBER_CHANGED = 1
ORDER_RECORDED = 2
REFUND_RECORDED = 3
EVENT_RECORDED = 4
TAG_CHANGED = 5
# Entries after which a member's recency summaries are read again (fact_windows.py).
FACT_CHANGED = frozenset({ORDER_RECORDED, REFUND_RECORDED, EVENT_RECORDED})
FOLLOWED = [MEMBER_CHANGED, ORDER_RECORDED, REFUND_RECORDED, EVENT_RECORDED, TAG_CHANGED]

# Profile fields kept as buckets -> their column of tagging_read.members, as text (enum-valued
# columns hold the enum's number).
BUCKET_COLUMNS: dict[str, str] = {
    "gender": "gender::text",
    "city_tier": "city_tier::text",
    "level": "level",
    "register_channel": "register_channel",
    "city": "city",
}


async def feed_end(conn: Connection) -> outbox.Position | None:
    """The position of the newest readable entry of tagging's feed (None: it has none)."""
    return outbox.parse_cursor(await outbox.last_settled(conn, FEED) or "")


async def session_zone(conn: Connection) -> str:
    """The session's TimeZone: statements subtract calendar days in it."""
    return str(await conn.fetchval("SELECT current_setting('TimeZone')"))


async def number_range(conn: Connection) -> tuple[int, int] | None:
    """The smallest and largest member number of the tenant, None when it has no members."""
    row = await conn.fetchrow(
        "SELECT min(member_no) AS low, max(member_no) AS high FROM tagging_read.members"
    )
    return None if row is None or row["low"] is None else (row["low"], row["high"])


async def member_chunk(conn: Connection, low: int, high: int) -> tuple[list[int], list[str]]:
    """The members numbered from `low` to `high`: (numbers ascending, their ids). A range of
    numbers, not a LIMIT after the last one, so each member row is read once however many chunks."""
    row = await conn.fetchrow(
        """SELECT array_agg(member_no ORDER BY member_no) AS numbers,
                  array_agg(member_id ORDER BY member_no) AS ids
           FROM tagging_read.members WHERE member_no BETWEEN $1 AND $2""",
        low,
        high,
    )
    if row is None or row["numbers"] is None:
        return [], []
    return row["numbers"], row["ids"]


async def profile_buckets(conn: Connection, field: str) -> list[tuple[str, list[int]]]:
    """(value as text, member numbers) of each value of a bucketed field. One statement per field
    (fetched whole, so PostgreSQL may scan in parallel, which a cursor forbids): what Python holds
    at once is one field's numbers."""
    column = BUCKET_COLUMNS[field]
    rows = await conn.fetch(
        f"SELECT {column} AS value, array_agg(member_no) AS numbers FROM tagging_read.members GROUP BY 1"
    )
    return [(row["value"], row["numbers"]) for row in rows]


async def tag_dimensions(conn: Connection) -> list[str]:
    """The dimensions members hold values of now (a skip scan of the current tags' index)."""
    rows = await conn.fetch(
        """WITH RECURSIVE d(dimension) AS (
               SELECT min(dimension) FROM tagging_read.current_member_tags
               UNION ALL
               SELECT (SELECT min(t.dimension) FROM tagging_read.current_member_tags t
                       WHERE t.dimension > d.dimension)
               FROM d WHERE d.dimension IS NOT NULL)
           SELECT dimension FROM d WHERE dimension IS NOT NULL"""
    )
    return [row["dimension"] for row in rows]


async def current_tags(conn: Connection, dimension: str) -> list[tuple[str, list[int]]]:
    """(value, member numbers) of each value members hold now of one dimension (one statement per
    dimension, as `profile_buckets`)."""
    rows = await conn.fetch(
        """SELECT t.value, array_agg(m.member_no) AS numbers
           FROM tagging_read.current_member_tags t
           JOIN tagging_read.members m ON m.member_id = t.member_id
           WHERE t.dimension = $1 GROUP BY t.value""",
        dimension,
    )
    return [(row["value"], row["numbers"]) for row in rows]


# The recency summaries by UTC day of their time (fact_windows.py): (source, kind, category, day,
# member numbers), one row per day of a summary. Purchases have no kind (0).
_DAY = "floor(extract(epoch FROM {column}) / 86400)::int"
_SUMMARIES = {
    fact_windows.EVENTS: ("tagging_read.event_recency", "r.kind", "r.last_time"),
    fact_windows.PURCHASES: ("tagging_read.purchase_recency", "0::smallint", "r.last_paid_time"),
}


async def fact_days(conn: Connection, source: str) -> list[asyncpg.Record]:
    """`kind`, `category`, `day` and `numbers` (member numbers) of one summary
    (`fact_windows.EVENTS` or `PURCHASES`), grouped in PostgreSQL as `current_tags` is."""
    table, kind, column = _SUMMARIES[source]
    return await conn.fetch(
        f"""SELECT {kind} AS kind, r.category, {_DAY.format(column=column)} AS day,
                   array_agg(m.member_no) AS numbers
            FROM {table} r JOIN tagging_read.members m ON m.member_id = r.member_id
            GROUP BY 1, 2, 3"""
    )


async def facts_of(conn: Connection, member_ids: Sequence[str]) -> list[asyncpg.Record]:
    """`member_no` of each member that exists, with `source`, `kind`, `category` and `at` of each of
    its recency rows (those four NULL for a member with none)."""
    parts = " UNION ALL ".join(
        f"""SELECT '{source}' AS source, {kind} AS kind, r.category, {column} AS at
            FROM {table} r WHERE r.member_id = m.member_id"""
        for source, (table, kind, column) in _SUMMARIES.items()
    )
    return await conn.fetch(
        f"""SELECT m.member_no, f.source, f.kind, f.category, f.at
            FROM tagging_read.members m LEFT JOIN LATERAL ({parts}) f ON true
            WHERE m.member_id = ANY($1::text[])""",
        list(member_ids),
    )


async def read_changes(
    conn: Connection, after: outbox.Position | None, limit: int, upto: outbox.Position
) -> list[asyncpg.Record]:
    """Member, fact and tag changes after `after` up to `upto`, in feed order: `kind`, `member_id`,
    `tag_dimension` and `tag_value` (the value added or removed), `position`, `seq`."""
    return await outbox.read_settled(
        conn,
        FEED,
        "f.kind, f.member_id, f.tag_dimension, f.tag_value",
        after,
        limit,
        "f.kind = ANY($4::smallint[])",
        [FOLLOWED],
        upto,
    )


async def unpositioned_changes(conn: Connection) -> list[asyncpg.Record]:
    """Member, fact and tag changes (as `read_changes`, without position) of the transactions `conn`'s
    snapshot sees committed that have no position yet, found as the sequencer finds them
    (runtime/feed_sequencer.py): those that began after its last snapshot, one index probe each,
    and those that snapshot saw running. Nothing before the tenant's first sequencing round. Each
    waiting transaction's entries are read by their key (the sorted LATERAL is never flattened into
    a merge join, which would walk the tenant's whole feed and positions up to them)."""
    return await conn.fetch(
        """WITH RECURSIVE last AS (SELECT s.seen FROM tagging_read.feed_sequencer s),
           began(txid) AS (
               SELECT (pg_snapshot_xmax(last.seen)::text::numeric - 1)::text::xid8 FROM last
             UNION ALL
               SELECT (SELECT f.txid FROM tagging_read.feed f WHERE f.txid > b.txid
                       ORDER BY f.txid LIMIT 1)
               FROM began b WHERE b.txid IS NOT NULL),
           waiting AS (
               SELECT b.txid FROM began b, last WHERE b.txid >= pg_snapshot_xmax(last.seen)
             UNION
               SELECT x.txid FROM last, pg_snapshot_xip(last.seen) AS x(txid))
           SELECT e.kind, e.member_id, e.tag_dimension, e.tag_value
           FROM waiting w CROSS JOIN LATERAL (
               SELECT f.kind, f.member_id, f.tag_dimension, f.tag_value, f.seq FROM tagging_read.feed f
               WHERE f.txid = w.txid AND f.kind = ANY($1::smallint[])
                 AND NOT EXISTS (SELECT 1 FROM tagging_read.feed_positions p WHERE p.txid = w.txid)
               ORDER BY f.seq) e
           ORDER BY w.txid, e.seq""",
        FOLLOWED,
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
