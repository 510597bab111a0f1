"""SQL of the audience schema, and the reads of tagging's published views (`tagging_read.*`).

Every function runs on a connection already inside a tenant transaction. Nothing here names a
table of the tagging schema: the published views are the whole contract.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from runtime import outbox
from runtime.db import Connection

# --- definitions ---------------------------------------------------------------------------------

_AUDIENCE = """
SELECT a.audience_id, v.version, v.display_name, v.description, v.rule::text AS rule, v.content_hash,
       v.dynamic, v.referenced, a.create_request_id, a.create_time, a.update_time, a.delete_time
FROM audience.audiences a
JOIN audience.audience_versions v ON v.audience_id = a.audience_id"""


@dataclass(frozen=True)
class StoredVersion:
    audience_id: str
    display_name: str
    description: str
    rule: dict[str, Any]
    content_hash: str
    referenced: Sequence[str]
    dynamic: bool = False


def _row(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "rule": json.loads(row["rule"])}


async def lock_writes(conn: Connection, tenant_id: str) -> None:
    """Serialises the tenant's definition writes, so two writes can never close a reference cycle
    between them, and a delete never misses a reference being created."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('memberops.audience:' || $1, 0))", tenant_id
    )


async def insert_audience(conn: Connection, tenant_id: str, version: StoredVersion, request_id: str) -> bool:
    """Creates the audience at version 1; False when the id is taken (deleted ones included)."""
    created = await conn.fetchval(
        """INSERT INTO audience.audiences (tenant_id, audience_id, current_version, create_request_id)
           VALUES ($1, $2, 1, $3) ON CONFLICT (tenant_id, audience_id) DO NOTHING RETURNING true""",
        tenant_id,
        version.audience_id,
        request_id,
    )
    if created:
        await _insert_version(conn, tenant_id, 1, version)
    return bool(created)


async def _insert_version(conn: Connection, tenant_id: str, number: int, version: StoredVersion) -> None:
    await conn.execute(
        """INSERT INTO audience.audience_versions
               (tenant_id, audience_id, version, display_name, description, rule, referenced, content_hash,
                dynamic)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::text[], $8, $9)""",
        tenant_id,
        version.audience_id,
        number,
        version.display_name,
        version.description,
        json.dumps(version.rule, separators=(",", ":")),
        list(version.referenced),
        version.content_hash,
        version.dynamic,
    )


async def add_version(conn: Connection, tenant_id: str, number: int, version: StoredVersion) -> None:
    await _insert_version(conn, tenant_id, number, version)
    await conn.execute(
        """UPDATE audience.audiences SET current_version = $2, update_time = now()
           WHERE audience_id = $1""",
        version.audience_id,
        number,
    )


async def get_audience(
    conn: Connection, audience_id: str, version: int | None, *, include_deleted: bool = False
) -> dict[str, Any] | None:
    """The audience at `version` (the current one when None)."""
    row = await conn.fetchrow(
        f"""{_AUDIENCE} AND v.version = COALESCE($2, a.current_version)
            WHERE a.audience_id = $1 AND ($3 OR a.delete_time IS NULL)""",
        audience_id,
        version,
        include_deleted,
    )
    return None if row is None else _row(row)


async def lock_audience(conn: Connection, audience_id: str) -> dict[str, Any] | None:
    """Locks the audience (deleted or not), then reads its current version: locked in the same
    statement as the join, a lock that waited for a concurrent update would recheck the join
    against the old version row and find nothing."""
    if not await conn.fetchval(
        "SELECT true FROM audience.audiences WHERE audience_id = $1 FOR UPDATE", audience_id
    ):
        return None
    return await get_audience(conn, audience_id, None, include_deleted=True)


async def list_audiences(conn: Connection, after_id: str, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""{_AUDIENCE} AND v.version = a.current_version
            WHERE a.audience_id > $1 AND a.delete_time IS NULL
            ORDER BY a.audience_id LIMIT $2""",
        after_id,
        limit,
    )
    return [_row(row) for row in rows]


async def mark_deleted(conn: Connection, audience_id: str) -> None:
    await conn.execute(
        """UPDATE audience.audiences SET delete_time = COALESCE(delete_time, now())
           WHERE audience_id = $1""",
        audience_id,
    )


async def referencing(conn: Connection, audience_id: str) -> list[str]:
    """The audiences (not deleted) whose current version references `audience_id` directly."""
    rows = await conn.fetch(
        """SELECT a.audience_id FROM audience.audiences a
           JOIN audience.audience_versions v
             ON v.audience_id = a.audience_id AND v.version = a.current_version
           WHERE a.delete_time IS NULL AND $1 = ANY(v.referenced)
           ORDER BY a.audience_id""",
        audience_id,
    )
    return [row["audience_id"] for row in rows]


_CURRENT_RULES = """SELECT a.audience_id, v.version, v.rule::text AS rule, v.referenced
   FROM audience.audiences a
   JOIN audience.audience_versions v ON v.audience_id = a.audience_id AND v.version = a.current_version
   WHERE a.delete_time IS NULL AND """


async def current_rules(conn: Connection, audience_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The current rule, version and direct references of each audience named that is not deleted."""
    rows = await conn.fetch(_CURRENT_RULES + "a.audience_id = ANY($1::text[])", list(audience_ids))
    return {row["audience_id"]: _row(row) for row in rows}


async def referencing_rules(conn: Connection, audience_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """As `current_rules`, for the audiences (not deleted) whose current version references any of
    `audience_ids` directly."""
    rows = await conn.fetch(_CURRENT_RULES + "v.referenced && $1::text[]", list(audience_ids))
    return {row["audience_id"]: _row(row) for row in rows}


# --- tagging's published views -------------------------------------------------------------------


async def tag_dimensions(conn: Connection, dimensions: Sequence[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT dimension, state, tag_values FROM tagging_read.tag_dimensions
           WHERE dimension = ANY($1::text[])""",
        list(dimensions),
    )
    return {row["dimension"]: row for row in rows}


async def current_tags(
    conn: Connection, member_ids: Sequence[str], dimensions: Sequence[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT member_id, dimension, value FROM tagging_read.current_member_tags
           WHERE member_id = ANY($1::text[]) AND dimension = ANY($2::text[])
           ORDER BY member_id, dimension, value""",
        list(member_ids),
        list(dimensions),
    )


async def estimated_rows(conn: Connection, sql: str, args: Sequence[Any]) -> float:
    """The planner's estimate of the rows `sql` returns, from a plan alone (nothing runs)."""
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    return float(json.loads(plan)[0]["Plan"]["Plan Rows"])


def versions_current(ids: str, versions: str) -> str:
    """A condition that holds while the audiences in the array `ids` all exist, undeleted, at the
    matching `versions` (placeholders of text[] and int[] arguments)."""
    return f"""(SELECT count(*) FROM audience.audiences a
                JOIN unnest({ids}::text[], {versions}::int[]) AS w (audience_id, version)
                  ON a.audience_id = w.audience_id AND a.current_version = w.version
                WHERE a.delete_time IS NULL) = cardinality({ids}::text[])"""


# --- snapshots -----------------------------------------------------------------------------------

_SNAPSHOT = """SELECT snapshot_id, request_id, audience_id, audience_version, salt, arms::text AS arms,
       member_count, content_hash, create_time FROM audience.snapshots"""


async def insert_snapshot(
    conn: Connection,
    tenant_id: str,
    snapshot_id: str,
    request_id: str,
    audience_id: str,
    audience_version: int,
    salt: str,
    arms: str,
    digest: str,
) -> bool:
    """Records the snapshot; False when the request id made one already (the unique constraint
    decides, so concurrent retries wait for the first and then see it)."""
    inserted = await conn.fetchval(
        """INSERT INTO audience.snapshots
               (tenant_id, snapshot_id, request_id, audience_id, audience_version, salt, arms, content_hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
           ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING true""",
        tenant_id,
        snapshot_id,
        request_id,
        audience_id,
        audience_version,
        salt,
        arms,
        digest,
    )
    return bool(inserted)


async def list_snapshots(
    conn: Connection, audience_id: str, after: tuple[int, str] | None, limit: int
) -> list[asyncpg.Record]:
    """The audience's snapshots newest first, after `after` (creation time in microseconds since
    the epoch, snapshot id) when given."""
    order = "ORDER BY create_time DESC, snapshot_id DESC LIMIT $2"
    if after is None:
        return await conn.fetch(f"{_SNAPSHOT} WHERE audience_id = $1 {order}", audience_id, limit)
    return await conn.fetch(
        f"""{_SNAPSHOT} WHERE audience_id = $1
              AND (create_time, snapshot_id)
                  < ('epoch'::timestamptz + $3::bigint * interval '1 microsecond', $4)
            {order}""",
        audience_id,
        limit,
        after[0],
        after[1],
    )


async def snapshot_by_request(conn: Connection, request_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"{_SNAPSHOT} WHERE request_id = $1", request_id)


async def get_snapshot(conn: Connection, snapshot_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"{_SNAPSHOT} WHERE snapshot_id = $1", snapshot_id)


async def arm_counts(conn: Connection, snapshot_id: str) -> dict[int, int]:
    rows = await conn.fetch(
        """SELECT arm, count(*) AS members FROM audience.snapshot_members
           WHERE snapshot_id = $1 GROUP BY arm""",
        snapshot_id,
    )
    return {row["arm"]: row["members"] for row in rows}


async def size_snapshot(conn: Connection, snapshot_id: str, arms: str, member_count: int) -> None:
    await conn.execute(
        "UPDATE audience.snapshots SET arms = $2::jsonb, member_count = $3 WHERE snapshot_id = $1",
        snapshot_id,
        arms,
        member_count,
    )


async def member_arm(conn: Connection, snapshot_id: str, member_id: str) -> int | None:
    arm = await conn.fetchval(
        "SELECT arm FROM audience.snapshot_members WHERE snapshot_id = $1 AND member_id = $2",
        snapshot_id,
        member_id,
    )
    return None if arm is None else int(arm)


async def snapshot_members_after(
    conn: Connection, snapshot_id: str, after: str, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` members of the snapshot after member id `after`, in member id order, with the
    index of their arm (the primary key's order, so a page is one index range)."""
    return await conn.fetch(
        """SELECT member_id, arm FROM audience.snapshot_members
           WHERE snapshot_id = $1 AND member_id > $2 ORDER BY member_id LIMIT $3""",
        snapshot_id,
        after,
        limit,
    )


# --- breakdowns ----------------------------------------------------------------------------------
# Each takes the audience's compiled `SELECT member_id …` and its arguments, appends its own
# parameters after them, and reads one statement, so every figure comes from one snapshot of data.

# Orders that count, as in tagging's aggregates: paid by the evaluation time, not wholly refunded.
_COUNTED_ORDER = (
    "o.paid_time <= $1::timestamptz"
    " AND NOT (o.amount_minor > 0 AND o.refunded_amount_minor >= o.amount_minor)"
)


async def tag_breakdown(
    conn: Connection, members_sql: str, args: list[Any], dimension: str
) -> list[asyncpg.Record]:
    """Rows (`part`, `value`, `n`): part 0 the audience size, 1 members without a value, 2 per value."""
    d = f"${len(args) + 1}::text"
    return await conn.fetch(
        f"""WITH s AS MATERIALIZED ({members_sql})
            SELECT 0 AS part, NULL::text AS value, count(*) AS n FROM s
            UNION ALL
            SELECT 1, NULL, count(*) FROM s WHERE NOT EXISTS (
                SELECT 1 FROM tagging_read.current_member_tags t
                WHERE t.member_id = s.member_id AND t.dimension = {d})
            UNION ALL
            SELECT 2, t.value, count(*) FROM s
            JOIN tagging_read.current_member_tags t ON t.member_id = s.member_id AND t.dimension = {d}
            GROUP BY t.value""",
        *args,
        dimension,
    )


async def order_time_breakdown(
    conn: Connection, members_sql: str, args: list[Any], time_zone: str, window_days: int
) -> tuple[int, list[asyncpg.Record]]:
    """(audience size, rows of `weekday`, `hour`, `orders`, `members` in no order)."""
    zone, window = f"${len(args) + 1}::text", f"${len(args) + 2}::int"
    local = f"o.paid_time AT TIME ZONE {zone}"
    rows = await conn.fetch(
        f"""WITH s AS MATERIALIZED ({members_sql}),
            cells AS (
                SELECT extract(isodow FROM {local})::int AS weekday, extract(hour FROM {local})::int AS hour,
                       count(*) AS orders, count(DISTINCT o.member_id) AS members
                FROM s JOIN tagging_read.orders o ON o.member_id = s.member_id
                WHERE {_COUNTED_ORDER}
                  AND ({window} = 0 OR o.paid_time > $1::timestamptz - make_interval(days => {window}))
                GROUP BY 1, 2)
            SELECT NULL::int AS weekday, NULL::int AS hour, NULL::bigint AS orders, count(*) AS members
            FROM s
            UNION ALL SELECT * FROM cells""",
        *args,
        time_zone,
        window_days,
    )
    size = next(row["members"] for row in rows if row["weekday"] is None)
    return int(size), [row for row in rows if row["weekday"] is not None]


async def weekly_breakdown(
    conn: Connection,
    members_sql: str,
    args: list[Any],
    first_monday: dt.date,
    last_monday: dt.date,
    time_zone: str,
    tag: tuple[str, str] | None,
) -> tuple[int, list[asyncpg.Record]]:
    """(members counted, rows of `week`, `buyers`, `orders`, `gmv` for every week, in no order)."""
    n = len(args)
    first, last, zone = f"${n + 1}::date", f"${n + 2}::date", f"${n + 3}::text"
    holding = ""
    extra: list[Any] = []
    if tag is not None:
        holding = f""" AND EXISTS (SELECT 1 FROM tagging_read.current_member_tags t
            WHERE t.member_id = a.member_id AND t.dimension = ${n + 4}::text AND t.value = ${n + 5}::text)"""
        extra = list(tag)
    rows = await conn.fetch(
        f"""WITH s AS MATERIALIZED (SELECT a.member_id FROM ({members_sql}) AS a WHERE true{holding}),
            weeks AS (SELECT generate_series({first}, {last}, interval '7 days')::date AS week),
            bought AS (
                SELECT date_trunc('week', o.paid_time AT TIME ZONE {zone})::date AS week, o.member_id,
                       o.net_amount_minor
                FROM s JOIN tagging_read.orders o ON o.member_id = s.member_id
                WHERE {_COUNTED_ORDER}
                  AND o.paid_time >= {first}::timestamp AT TIME ZONE {zone}
                  AND o.paid_time < ({last} + 7)::timestamp AT TIME ZONE {zone}),
            figures AS (
                SELECT w.week, count(DISTINCT b.member_id) AS buyers, count(b.member_id) AS orders,
                       COALESCE(sum(b.net_amount_minor), 0)::bigint AS gmv
                FROM weeks w LEFT JOIN bought b ON b.week = w.week
                GROUP BY w.week)
            SELECT NULL::date AS week, count(*) AS buyers, NULL::bigint AS orders, NULL::bigint AS gmv FROM s
            UNION ALL SELECT * FROM figures""",
        *args,
        first_monday,
        last_monday,
        time_zone,
        *extra,
    )
    size = next(row["buyers"] for row in rows if row["week"] is None)
    return int(size), [row for row in rows if row["week"] is not None]


# --- dynamic audiences ---------------------------------------------------------------------------

ENTERED, EXITED = 1, 2


# Whether an audience the last whole evaluation of `a` read through references is at another
# version now (or gone): its stored membership is then stale (migration 0005).
REFERENCES_CHANGED = """EXISTS (
    SELECT 1 FROM jsonb_each_text(a.membership_references) AS r (audience_id, version)
    LEFT JOIN audience.audiences ra ON ra.audience_id = r.audience_id AND ra.delete_time IS NULL
    WHERE ra.current_version IS DISTINCT FROM r.version::int)"""


async def try_lock_maintenance(conn: Connection, tenant_id: str) -> bool:
    """One maintainer per tenant at a time, whichever replica: others skip the round."""
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('memberops.audience.dynamic:' || $1, 0))",
            tenant_id,
        )
    )


async def dynamic_audiences(conn: Connection) -> list[asyncpg.Record]:
    """Every audience whose membership is kept or was: current version, flags and last evaluation."""
    return list(
        await conn.fetch(
            f"""SELECT a.audience_id, a.current_version, v.dynamic, a.delete_time IS NOT NULL AS deleted,
                      a.membership_version, a.membership_time, {REFERENCES_CHANGED} AS references_changed
               FROM audience.audiences a
               JOIN audience.audience_versions v
                 ON v.audience_id = a.audience_id AND v.version = a.current_version
               WHERE (v.dynamic AND a.delete_time IS NULL) OR a.membership_version IS NOT NULL
               ORDER BY a.audience_id"""
        )
    )


# When a whole evaluation's entry or exit happened (issue 19): the facts and tag changes of the member
# tagging wrote after the maintainer's cursor have not been followed yet and may be what moved it, so
# it happened when the latest of them did; else, for a new definition (a new audience, version or
# referenced version), when the member's latest fact happened (an audience defined today finds
# members who qualified long ago: that is no news; a member without facts, when it registered or
# was stored); else time alone moved it ("no order in 30 days"), at the evaluation's as_of. Never
# after as_of.
_UNFOLLOWED = """unfollowed AS (
                SELECT f.member_id, max(f.occur_time) AS fact_time, bool_and(f.backfilled) AS backfilled
                FROM {entries} f
                WHERE {after} AND f.member_id IN (SELECT member_id FROM entered UNION ALL
                                                  SELECT member_id FROM exited)
                GROUP BY f.member_id),"""
# The entries after a cursor (position $P, seq $S), read by the feed's key: those of the cursor's
# transaction and every later txid, and those of earlier txids positioned after it (a transaction
# that ran long); then those at or before the cursor are left out. (An entry of an earlier txid
# committed but not positioned yet is missed: it only dates an entry or exit.)
# The cursor's txid is a parameter ({T}), not a subquery, so the planner sees how few entries lie
# past it and reads them by the key instead of scanning the feed.
_AFTER_CURSOR = """(SELECT e.*, p.position FROM (
                    SELECT f.* FROM tagging_read.feed f WHERE f.txid >= {T}
                    UNION ALL
                    SELECT f.* FROM tagging_read.feed_positions q JOIN tagging_read.feed f ON f.txid = q.txid
                    WHERE q.position > {P} AND q.txid < {T}
                  ) e LEFT JOIN tagging_read.feed_positions p ON p.txid = e.txid)"""
_LATEST_FACT = """greatest(
                    (SELECT max(o.paid_time) FROM tagging_read.orders o WHERE o.member_id = k.member_id),
                    (SELECT max(e.occur_time) FROM tagging_read.events e WHERE e.member_id = k.member_id),
                    (SELECT coalesce(m.register_time, m.create_time) FROM tagging_read.members m
                     WHERE m.member_id = k.member_id))"""


async def apply_membership(
    conn: Connection,
    members_sql: str,
    args: list[Any],
    tenant_id: str,
    audience_id: str,
    version: int,
    only: Sequence[str] | None,
    as_of: dt.datetime,
    fact_times: Mapping[str, dt.datetime],
    followed: outbox.Position | None = None,
    new_definition: bool = False,
    history: Sequence[str] = (),
) -> tuple[int, int]:
    """Makes the stored membership equal `members_sql` (for the members in `only`, or all) and writes
    each entry and exit to the feed; returns (entered, exited). For `only`, dated by the member's
    time in `fact_times` (when the facts that moved it happened) or else `as_of`; a whole
    evaluation, by the tagging entries after `followed` (see _UNFOLLOWED). An entry or exit is
    `backfilled` when only imported history moved the member: for `only`, the members in `history`;
    for a whole evaluation, members whose unfollowed tagging entries are all back-filled."""
    n = len(args)
    t, a, v, scope = f"${n + 1}::text", f"${n + 2}::text", f"${n + 3}::int", f"${n + 4}::text[]"
    as_of_, ids, times = f"${n + 5}::timestamptz", f"${n + 6}::text[]", f"${n + 7}::timestamptz[]"
    extra: list[Any] = []
    unfollowed, occur, join = "", f"coalesce(ft.fact_time, {as_of_})", ""
    backfilled = f"k.member_id = ANY(${n + 8}::text[])"  # `history`, passed for `only` alone
    if only is None:
        after, entries = "true", "tagging_read.feed"
        if followed is not None:
            # After the cursor in feed order, or not given a position yet (committed since).
            after = f"(f.position IS NULL OR (f.position, f.seq) > (${n + 8}::bigint, ${n + 9}::bigint))"
            entries = _AFTER_CURSOR.format(P=f"${n + 8}::bigint", T=f"${n + 10}::text::xid8")
            txid = await conn.fetchval(
                "SELECT txid::text FROM tagging_read.feed_positions WHERE position = $1", followed[0]
            )
            extra = [followed[0], followed[1], txid]
        unfollowed = _UNFOLLOWED.format(entries=entries, after=after)
        latest = _LATEST_FACT if new_definition else "NULL::timestamptz"
        occur = f"least({as_of_}, coalesce(u.fact_time, {latest}, {as_of_}))"
        join = "LEFT JOIN unfollowed u ON u.member_id = k.member_id"
        backfilled = "coalesce(u.backfilled, false)"
    row = await conn.fetchrow(
        f"""WITH now_in AS MATERIALIZED ({members_sql}),
            held AS (SELECT d.member_id FROM audience.dynamic_members d
                     WHERE d.audience_id = {a} AND ({scope} IS NULL OR d.member_id = ANY({scope}))),
            entered AS (
                INSERT INTO audience.dynamic_members (tenant_id, audience_id, member_id, version)
                SELECT {t}, {a}, n.member_id, {v} FROM now_in n
                WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.member_id = n.member_id)
                ON CONFLICT DO NOTHING
                RETURNING member_id),
            exited AS (
                DELETE FROM audience.dynamic_members d
                WHERE d.audience_id = {a} AND d.member_id IN (
                    SELECT h.member_id FROM held h
                    WHERE NOT EXISTS (SELECT 1 FROM now_in n WHERE n.member_id = h.member_id))
                RETURNING d.member_id),
            {unfollowed}
            logged AS (
                INSERT INTO audience.feed (tenant_id, kind, audience_id, member_id, version, occur_time,
                                           backfilled)
                SELECT {t}, k.kind, {a}, k.member_id, {v}, {occur}, {backfilled} FROM (
                    SELECT {ENTERED} AS kind, member_id FROM entered
                    UNION ALL SELECT {EXITED}, member_id FROM exited) AS k
                LEFT JOIN unnest({ids}, {times}) AS ft(member_id, fact_time) USING (member_id)
                {join}
                ORDER BY k.member_id
                RETURNING 1)
            SELECT (SELECT count(*) FROM entered) AS entered, (SELECT count(*) FROM exited) AS exited,
                   (SELECT count(*) FROM logged) AS logged""",
        *args,
        tenant_id,
        audience_id,
        version,
        None if only is None else list(only),
        as_of,
        list(fact_times),
        list(fact_times.values()),
        *extra,
        *([] if only is None else [list(history)]),
    )
    assert row is not None
    return int(row["entered"]), int(row["exited"])


async def clear_membership(
    conn: Connection, tenant_id: str, audience_id: str, version: int, as_of: dt.datetime
) -> int:
    """Every member leaves (the audience was deleted or is no longer dynamic) at `as_of`; returns
    how many."""
    left = await conn.fetchval(
        f"""WITH exited AS (DELETE FROM audience.dynamic_members WHERE audience_id = $2 RETURNING member_id),
               logged AS (INSERT INTO audience.feed (tenant_id, kind, audience_id, member_id, version,
                                                     occur_time)
                          SELECT $1, {EXITED}, $2, member_id, $3, $4 FROM exited ORDER BY member_id
                          RETURNING 1)
            SELECT count(*) FROM logged""",
        tenant_id,
        audience_id,
        version,
        as_of,
    )
    await conn.execute(
        """UPDATE audience.audiences SET membership_version = NULL, membership_time = NULL,
                                         membership_txid = NULL
           WHERE audience_id = $1""",
        audience_id,
    )
    return int(left)


async def mark_evaluated(
    conn: Connection, audience_id: str, version: int, moment: dt.datetime, references: Mapping[str, int]
) -> None:
    """Records a whole evaluation at `version`, which read the `references` (id -> version)."""
    await conn.execute(
        """UPDATE audience.audiences
           SET membership_version = $2, membership_time = $3, membership_txid = pg_current_xact_id(),
               membership_references = $4::text::jsonb
           WHERE audience_id = $1""",
        audience_id,
        version,
        moment,
        json.dumps(dict(references)),
    )


async def tagging_cursor(conn: Connection, tenant_id: str) -> str:
    """The cursor over tagging's feed ('' before the first round). Read under the maintenance lock,
    so an idle round writes nothing."""
    cursor = await conn.fetchval(
        "SELECT tagging_cursor FROM audience.followers WHERE tenant_id = $1", tenant_id
    )
    return "" if cursor is None else str(cursor)


async def save_tagging_cursor(conn: Connection, tenant_id: str, cursor: str) -> None:
    await conn.execute(
        """INSERT INTO audience.followers (tenant_id, tagging_cursor) VALUES ($1, $2)
           ON CONFLICT (tenant_id) DO UPDATE SET tagging_cursor = excluded.tagging_cursor""",
        tenant_id,
        cursor,
    )


async def last_tagging_cursor(conn: Connection) -> str | None:
    return await outbox.last_settled(conn, "tagging_read.feed")


async def changed_members(
    conn: Connection, after: outbox.Position | None, limit: int
) -> list[asyncpg.Record]:
    """Settled entries of tagging's feed (through its published view): whose facts or tags changed,
    when that happened, and whether an import loaded it (`member_id, occur_time, backfilled`)."""
    return await outbox.read_settled(
        conn, "tagging_read.feed", "member_id, occur_time, backfilled", after, limit
    )


async def indexable_audiences(conn: Connection, read: outbox.Position | None) -> dict[str, int]:
    """audience id -> version of each dynamic audience whose stored membership is its current
    definition's, evaluated by a transaction whose feed entries are all among those read up to
    `read` (it wrote none, or its position is not after `read`; see migration 0004)."""
    rows = await conn.fetch(
        f"""SELECT a.audience_id, a.current_version FROM audience.audiences a
            JOIN audience.audience_versions v
              ON v.audience_id = a.audience_id AND v.version = a.current_version
            WHERE v.dynamic AND a.delete_time IS NULL AND a.membership_version = a.current_version
              AND (EXISTS (SELECT 1 FROM audience.feed_positions p
                           WHERE p.txid = a.membership_txid AND p.position <= $1::bigint)
                   OR NOT EXISTS (SELECT 1 FROM audience.feed f WHERE f.txid = a.membership_txid))
              AND NOT {REFERENCES_CHANGED}""",
        0 if read is None else read[0],
    )
    return {row["audience_id"]: row["current_version"] for row in rows}


async def dynamic_members(conn: Connection) -> list[asyncpg.Record]:
    """(audience_id, member_id) of every stored membership."""
    return list(await conn.fetch("SELECT audience_id, member_id FROM audience.dynamic_members"))


async def last_audience_cursor(conn: Connection) -> str | None:
    return await outbox.last_settled(conn, "audience.feed")


async def read_audience_feed(
    conn: Connection, after: outbox.Position | None, limit: int, audience_id: str | None
) -> list[asyncpg.Record]:
    return await outbox.read_settled(
        conn,
        "audience.feed",
        "kind, audience_id, member_id, version, create_time, coalesce(occur_time, create_time) AS occur_time,"
        " backfilled",
        after,
        limit,
        "($4::text IS NULL OR audience_id = $4::text)",
        [audience_id],
    )
