"""SQL of tagging.member_tags: a compiled dimension applied to its members, operator tags, what a
member holds and held; every change is written to the feed in the same statement.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from runtime.db import Connection
from services.tagging.domain import FeedKind


def _log_tag_changes(
    tenant: str, dimension: str, version: str, occur_time: str, extra_payload: str = "", join: str = ""
) -> str:
    """CTEs `changes` and `logged`: every row of the `opened` and `closed` CTEs as a feed entry,
    dated `occur_time` (an SQL expression over `c`, the change, and what `join` joins)."""
    extra = f", {extra_payload}" if extra_payload else ""
    return f"""changes AS (
    SELECT member_id, value, 'added' AS change FROM opened
    UNION ALL SELECT member_id, value, 'removed' FROM closed
),
logged AS (
    INSERT INTO tagging.feed (tenant_id, kind, member_id, subject_id, payload)
    SELECT {tenant}, {int(FeedKind.TAG_CHANGED)}, c.member_id, {dimension},
           jsonb_build_object('dimension', {dimension}, 'value', c.value, 'change', c.change,
                              'definition_version', {version}, 'occur_time', {occur_time}{extra})
    FROM changes c {join} ORDER BY c.member_id, c.change DESC
    RETURNING 1
)"""


# When a change a whole recompute finds happened. Time alone moves members across windows ("no
# order in 90 days"): such a change happened at the recompute's as_of ($1). But when tagging learned
# orders of the member since its previous value was set (or the member has no previous value), the
# change is theirs: it happened when the latest of them was paid (capped at as_of), so a history
# load's orders stay history when the nightly recompute first segments their members; a member
# without orders and without a previous value changed at its registration. Only orders are looked
# at (few per member, by index); multi-valued dimensions see a previous value only when one closes.
_LEARNED_JOIN = """
    LEFT JOIN (SELECT member_id, max(valid_from) AS since FROM closed GROUP BY member_id) p USING (member_id)
    LEFT JOIN tagging.members m USING (member_id)"""
_LEARNED_TIME = """least($1::timestamptz, coalesce(
        (SELECT max(o.paid_time) FROM tagging.orders o
         WHERE o.member_id = c.member_id AND o.record_time > coalesce(p.since, '-infinity'::timestamptz)),
        CASE WHEN p.since IS NULL THEN coalesce(m.register_time, m.create_time) END,
        $1::timestamptz))"""

_RULE_SOURCE = 1
_OPERATOR_SOURCE = 2


async def apply_dimension(
    conn: Connection,
    tenant_id: str,
    compiled: Any,
    now: Any,
    dimension: str,
    version: int,
    exclusive: bool,
    member_ids: list[str] | None = None,
    fact_times: Mapping[str, dt.datetime] | None = None,
) -> tuple[int, int]:
    """Makes the stored tags of one rule dimension match its compiled rules; returns (added, removed).

    Each change is dated by its member's entry in `fact_times` (when the facts that made the
    refresh happened), else by `now` (a scheduled recompute's as_of).

    One statement: the desired member-values are computed, held values no longer desired are
    closed, new ones opened, and each change is written to the feed. Rows another transaction
    changed meanwhile are skipped (`valid_to IS NULL` is re-checked, inserts do nothing on conflict).
    """
    n = len(compiled.params)
    t, d, ver, excl = (f"${n + 1}::text", f"${n + 2}::text", f"${n + 3}::int", f"${n + 4}::boolean")
    timed = (
        f"LEFT JOIN unnest(${n + 5}::text[], ${n + 6}::timestamptz[]) AS ft(member_id, fact_time)"
        " USING (member_id)"
    )
    occur = "coalesce(ft.fact_time, $1::timestamptz)"
    if member_ids is None:
        timed += _LEARNED_JOIN
        occur = _LEARNED_TIME
    members = f"AND t.member_id = ANY({compiled.member_filter})" if compiled.member_filter else ""
    # A single-value dimension's array holds at most one value; reading it directly (not through
    # unnest, which the planner guesses at ten rows a member) keeps the row estimates true.
    desired = (
        "SELECT c.member_id, c.tag_values[1] AS value FROM computed c WHERE cardinality(c.tag_values) > 0"
        if exclusive
        else "SELECT c.member_id, v.value FROM computed c, unnest(c.tag_values) AS v(value)"
    )
    sql = f"""
WITH computed AS ({compiled.sql}),
desired AS ({desired}),
held AS (
    SELECT t.id, t.member_id, t.value FROM tagging.member_tags t
    WHERE t.dimension = {d} AND t.valid_to IS NULL AND t.source = {_RULE_SOURCE} {members}
),
-- One full join finds both sides of the difference: held values no longer desired (no `w`) and
-- desired values not held (no `h`). Two anti-joins would hash both sets twice.
diff AS (
    SELECT h.id, w.member_id, w.value FROM held h
    FULL JOIN desired w ON w.member_id = h.member_id AND w.value = h.value
    WHERE h.id IS NULL OR w.member_id IS NULL
),
-- The closed ids as an array: a join here, planned on stale statistics of a table just filled
-- (one row guessed for thousands), ran as a nested loop of every held tag against every change.
-- A concurrent refresh with a later clock reading may have opened the tag after this statement's
-- evaluation time: it closes at its opening then, never before it.
closed AS (
    UPDATE tagging.member_tags t SET valid_to = greatest($1::timestamptz, t.valid_from)
    WHERE t.id = ANY(ARRAY(SELECT x.id FROM diff x WHERE x.member_id IS NULL)) AND t.valid_to IS NULL
    RETURNING t.member_id, t.value, t.valid_from
),
opened AS (
    INSERT INTO tagging.member_tags
        (tenant_id, member_id, dimension, value, definition_version, source, exclusive, valid_from)
    SELECT {t}, x.member_id, {d}, x.value, {ver}, {_RULE_SOURCE}, {excl}, $1::timestamptz FROM diff x
    -- Reading `closed` makes the closing UPDATE finish first (data-modifying CTEs otherwise run in
    -- no set order), so a member's old exclusive value is gone before its new one arrives.
    WHERE (SELECT count(*) FROM closed) >= 0 AND x.id IS NULL
    ON CONFLICT DO NOTHING
    RETURNING member_id, value
),
{_log_tag_changes(t, d, ver, occur, join=timed)}
SELECT (SELECT count(*) FROM opened) AS added, (SELECT count(*) FROM closed) AS removed,
       (SELECT count(*) FROM logged) AS logged
"""
    times = dict(fact_times or {})
    row = await conn.fetchrow(
        sql,
        *compiled.args(now, member_ids),
        tenant_id,
        dimension,
        version,
        exclusive,
        list(times),
        list(times.values()),
    )
    assert row is not None
    return int(row["added"]), int(row["removed"])


async def evaluate(conn: Connection, sql: str, args: list[Any]) -> asyncpg.Record:
    """Runs a compiled dimension for one member; the member exists, so there is one row."""
    row = await conn.fetchrow(sql, *args)
    assert row is not None, "the compiled query returns a row per member"
    return row


async def plan_full_recompute(conn: Connection) -> None:
    """A full recompute runs serial plans: its lanes already keep the cores busy, and a parallel plan
    whose workers each build the same hash of a whole-table aggregate (as PostgreSQL 18 picks for
    categories_bought on 1M members) triples the work for a shorter wall time only on an idle
    machine."""
    await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")


async def lock_members(conn: Connection, member_ids: list[str]) -> None:
    """Serialises tag evaluation per member: a second writer re-reads facts after the first commits."""
    await conn.execute(
        """SELECT 1 FROM tagging.members WHERE member_id = ANY($1::text[])
           ORDER BY member_id FOR NO KEY UPDATE""",
        member_ids,
    )


_MEMBER_TAG_COLUMNS = """id, member_id, dimension, value, definition_version, source, valid_from, valid_to,
    set_by, reason, removed_by, removed_reason"""


async def member_tags_at(conn: Connection, member_id: str, as_of: Any) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""SELECT {_MEMBER_TAG_COLUMNS} FROM tagging.member_tags
                WHERE member_id = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)
                ORDER BY dimension, value""",
            member_id,
            as_of,
        )
    )


async def members_tags_now(
    conn: Connection, member_ids: Sequence[str], dimensions: Sequence[str]
) -> list[asyncpg.Record]:
    """The tags the members hold now (of `dimensions`, or all when empty), in one statement."""
    return list(
        await conn.fetch(
            f"""SELECT {_MEMBER_TAG_COLUMNS} FROM tagging.member_tags
                WHERE member_id = ANY($1::text[]) AND valid_to IS NULL
                  AND (cardinality($2::text[]) = 0 OR dimension = ANY($2::text[]))
                ORDER BY member_id, dimension, value""",
            list(member_ids),
            list(dimensions),
        )
    )


async def tag_changes(
    conn: Connection, member_id: str, dimension: str, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"""SELECT {_MEMBER_TAG_COLUMNS} FROM tagging.member_tags
                WHERE ($1 = '' OR member_id = $1) AND ($2 = '' OR dimension = $2)
                  AND ($3::bigint IS NULL OR id < $3)
                ORDER BY id DESC LIMIT $4""",
            member_id,
            dimension,
            before_id,
            limit,
        )
    )


_OPERATOR_CHANGE_LOG = (
    _log_tag_changes(
        "$1::text", "$2::text", "$4::int", "$6::timestamptz", "'operator', $7::text, 'reason', $8::text"
    )
    + "\nSELECT count(DISTINCT member_id) AS changed FROM changes"
)


async def add_operator_tags(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    value: str,
    version: int,
    exclusive: bool,
    member_ids: list[str],
    operator: str,
    reason: str,
    now: Any,
) -> int:
    """Gives `value` to members lacking it (ending their other one if exclusive); returns how many changed."""
    changed = await conn.fetchval(
        f"""
WITH targets AS (SELECT unnest($5::text[]) AS member_id),
closed AS (
    UPDATE tagging.member_tags t
    SET valid_to = greatest($6::timestamptz, t.valid_from), removed_by = $7::text, removed_reason = $8::text
    FROM targets g
    WHERE $9::boolean AND t.member_id = g.member_id AND t.dimension = $2::text
      AND t.valid_to IS NULL AND t.value <> $3::text
    RETURNING t.member_id, t.value
),
opened AS (
    INSERT INTO tagging.member_tags (tenant_id, member_id, dimension, value, definition_version, source,
                                     exclusive, valid_from, set_by, reason)
    SELECT $1::text, g.member_id, $2::text, $3::text, $4::int, {_OPERATOR_SOURCE}, $9::boolean,
           $6::timestamptz, $7::text, $8::text
    FROM targets g
    -- Reading `closed` makes the UPDATE finish first (see apply_dimension).
    WHERE (SELECT count(*) FROM closed) >= 0
      AND NOT EXISTS (SELECT 1 FROM tagging.member_tags h WHERE h.member_id = g.member_id
                      AND h.dimension = $2::text AND h.value = $3::text AND h.valid_to IS NULL)
    ON CONFLICT DO NOTHING
    RETURNING member_id, value
),
{_OPERATOR_CHANGE_LOG}""",
        tenant_id,
        dimension,
        value,
        version,
        member_ids,
        now,
        operator,
        reason,
        exclusive,
    )
    return int(changed)


async def remove_operator_tags(
    conn: Connection,
    tenant_id: str,
    dimension: str,
    value: str,
    version: int,
    member_ids: list[str],
    operator: str,
    reason: str,
    now: Any,
) -> int:
    """Ends `value` for the members who hold it; returns how many changed."""
    changed = await conn.fetchval(
        f"""
WITH closed AS (
    UPDATE tagging.member_tags t
    SET valid_to = greatest($6::timestamptz, t.valid_from), removed_by = $7::text, removed_reason = $8::text
    WHERE t.member_id = ANY($5::text[]) AND t.dimension = $2::text AND t.value = $3::text
      AND t.valid_to IS NULL
    RETURNING t.member_id, t.value
),
opened AS (SELECT member_id, value FROM closed WHERE false),
{_OPERATOR_CHANGE_LOG}""",
        tenant_id,
        dimension,
        value,
        version,
        member_ids,
        now,
        operator,
        reason,
    )
    return int(changed)
