"""SQL of tagging.member_tags: a compiled dimension applied to its members, operator tags, what a
member holds and held; every change is written to the feed in the same statement.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


# When a change a whole recompute finds happened. The previous recompute of the dimension left a
# mark (its as_of and what its snapshot saw); `Unseen` holds the members with facts recorded since,
# and their values at that as_of given every fact known now. A change of such a member that was
# already true then was caused by those facts: it happened when the latest of them did (history
# stays history). Any other change was caused by time alone ("no order in 90 days"), or by facts
# that happened after the previous as_of: it happened at this recompute's as_of ($1). Before a
# dimension's first mark, a member's first value (none closed) happened when its latest order was
# paid, else at its registration: the first segmentation of a loaded history is history too.
_UNSEEN_JOIN = """
    LEFT JOIN (SELECT member_id, max(valid_from) AS since FROM closed GROUP BY member_id) p USING (member_id)
    LEFT JOIN tagging.members m USING (member_id)
    LEFT JOIN unnest({members}::text[], {values}::text[]) AS b(member_id, value)
        ON b.member_id = c.member_id AND b.value = c.value"""
_UNSEEN_TIME = """CASE
    WHEN ft.member_id IS NOT NULL THEN
        CASE WHEN (c.change = 'added') = (b.value IS NOT NULL) THEN least($1::timestamptz, ft.fact_time)
             ELSE $1::timestamptz END
    WHEN {marked} OR p.since IS NOT NULL THEN $1::timestamptz
    ELSE least($1::timestamptz, coalesce(
        (SELECT max(o.paid_time) FROM tagging.orders o WHERE o.member_id = c.member_id),
        m.register_time, m.create_time))
END"""
_MARK = """marked AS (
    INSERT INTO tagging.recompute_marks AS r (tenant_id, dimension, as_of, seen, definition_version)
    VALUES ({tenant}, {dimension}, $1::timestamptz, coalesce({seen}::pg_snapshot, pg_current_snapshot()),
            {version})
    ON CONFLICT (tenant_id, dimension) DO UPDATE
    SET as_of = excluded.as_of, seen = excluded.seen, definition_version = excluded.definition_version
    RETURNING 1
),"""


@dataclass(frozen=True)
class Unseen:
    """What a dimension's previous full recompute (at `as_of`; None before the first) did not see:
    each member with facts recorded since, when the latest of them happened (`fact_times`), and
    the values those members had at `as_of` given every fact known now (`values_then`)."""

    as_of: dt.datetime | None = None
    fact_times: Mapping[str, dt.datetime] = field(default_factory=dict)
    values_then: Sequence[tuple[str, str]] = ()
    # The definition version that recompute evaluated (None: marked before migration 0025).
    version: int | None = None
    # The snapshot that found the members above: the next mark, so a fact committed after it is
    # found by the next recompute, never lost between reading the feed and evaluating.
    seen: str | None = None
    # Every fact found is an order or event that happened after `as_of`. Orders and events are
    # never changed once recorded and an evaluation ignores facts after its time, so the rules at
    # `as_of` find what that recompute found: the values it stored (see `held_values`).
    only_later: bool = False


# The feed entries of the facts each input of a dimension is (rules.Input's values). Member changes
# are always read: a member created since the previous recompute is evaluated then too.
_INPUT_KINDS = {
    "profile": (FeedKind.MEMBER_CHANGED,),
    "orders": (FeedKind.ORDER_RECORDED, FeedKind.REFUND_RECORDED),
    "events": (FeedKind.EVENT_RECORDED,),
}


async def unseen_since_mark(conn: Connection, dimension: str, inputs: Sequence[str]) -> Unseen:
    """The previous full recompute's as_of and the members of the fact entries of the dimension's
    `inputs` (and member changes) its snapshot did not see, each dated by the latest of them that
    happened by that as_of, else by the latest of them."""
    mark = await conn.fetchrow(
        """SELECT as_of, seen::text AS seen, definition_version FROM tagging.recompute_marks
           WHERE dimension = $1""",
        dimension,
    )
    if mark is None:
        return Unseen(seen=await conn.fetchval("SELECT pg_current_snapshot()::text"))
    # Literal kind: the partial index feed_facts is used only when the query implies its predicate.
    later = (
        f"f.kind IN ({int(FeedKind.ORDER_RECORDED)}, {int(FeedKind.EVENT_RECORDED)}) AND f.occur_time > $2"
    )
    rows = await conn.fetch(
        f"""SELECT f.member_id,
                  coalesce(max(f.occur_time) FILTER (WHERE f.occur_time <= $2), max(f.occur_time)) AS t,
                  bool_and({later}) AS later, NULL::text AS seen
           FROM (SELECT member_id, kind,
                        coalesce((payload->>'occur_time')::timestamptz, (payload->>'paid_time')::timestamptz,
                                 (payload->>'refund_time')::timestamptz, create_time) AS occur_time
                 FROM tagging.feed
                 WHERE kind <> {int(FeedKind.TAG_CHANGED)} AND txid >= pg_snapshot_xmin($1::text::pg_snapshot)
                   AND NOT pg_visible_in_snapshot(txid, $1::text::pg_snapshot)
                   AND kind = ANY($3::smallint[])) f
           GROUP BY f.member_id
           UNION ALL SELECT NULL, NULL, NULL, pg_current_snapshot()::text""",
        mark["seen"],
        mark["as_of"],
        sorted({int(FeedKind.MEMBER_CHANGED), *(int(k) for i in inputs for k in _INPUT_KINDS[i])}),
    )
    return Unseen(
        mark["as_of"],
        {row["member_id"]: row["t"] for row in rows if row["member_id"] is not None},
        version=mark["definition_version"],
        seen=next(row["seen"] for row in rows if row["seen"] is not None),
        only_later=all(row["later"] for row in rows if row["member_id"] is not None),
    )


async def held_values(
    conn: Connection, dimension: str, member_ids: list[str], *, exclusive: bool
) -> list[tuple[str, str]]:
    """(member, value) of the rule values the members hold now. `exclusive`: the dimension is
    single-value, so its current tags come from the index of current exclusive values (see
    apply_dimension): 0.45 s against 0.2 s for 10k members on the 1M bench."""
    only = " AND exclusive" if exclusive else ""
    rows = await conn.fetch(
        f"""SELECT member_id, value FROM tagging.member_tags
            WHERE dimension = $1 AND valid_to IS NULL AND source = {_RULE_SOURCE}
              AND member_id = ANY($2::text[]){only}""",
        dimension,
        member_ids,
    )
    return [(row["member_id"], row["value"]) for row in rows]


async def values_at(
    conn: Connection, compiled: Any, as_of: dt.datetime, member_ids: list[str]
) -> list[tuple[str, str]]:
    """(member, value) of every value the members hold at `as_of` by a filtered dimension's rules."""
    rows = await conn.fetch(
        f"""WITH computed AS ({compiled.sql})
            SELECT c.member_id, v.value FROM computed c, unnest(c.tag_values) AS v(value)""",
        *compiled.args(as_of, member_ids),
    )
    return [(row["member_id"], row["value"]) for row in rows]


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
    unseen: Unseen | None = None,
    extra_payload: str = "",
) -> tuple[int, int]:
    """Makes the stored tags of one rule dimension match its compiled rules; returns (added, removed).

    A refresh (`member_ids`) dates each change by its member's entry in `fact_times` (when the
    facts that made the refresh happened), else by `now`. A recompute (`unseen` given: of every
    member, or incrementally of `member_ids`) dates them by what its previous one did not see
    (`unseen`, see _UNSEEN_TIME) and leaves its own mark. `extra_payload`
    adds constant `'key', value` pairs (SQL) to every feed entry, e.g. an import's backfilled mark.

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
    mark = ""
    times = dict(fact_times or {})
    extra: list[Any] = []
    if member_ids is None or unseen is not None:
        unseen = unseen or Unseen()
        times = dict(unseen.fact_times)
        timed += _UNSEEN_JOIN.format(members=f"${n + 7}", values=f"${n + 8}")
        occur = _UNSEEN_TIME.format(marked="true" if unseen.as_of is not None else "false")
        mark = _MARK.format(tenant=t, dimension=d, version=ver, seen=f"${n + 9}::text")
        extra = [[m for m, _ in unseen.values_then], [v for _, v in unseen.values_then], unseen.seen]
    members = f"AND t.member_id = ANY({compiled.member_filter})" if compiled.member_filter else ""
    if exclusive and compiled.member_filter:
        # Every value of a single-value dimension is written exclusive (its cardinality never
        # changes); saying so lets a member list's held tags come from the index of current
        # exclusive values, one entry a member, instead of the member-history index and each
        # member's past rows (about half the time on the 1M bench).
        members += " AND t.exclusive"
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
{mark}
{_log_tag_changes(t, d, ver, occur, extra_payload, join=timed)}
SELECT (SELECT count(*) FROM opened) AS added, (SELECT count(*) FROM closed) AS removed,
       (SELECT count(*) FROM logged) AS logged
"""
    row = await conn.fetchrow(
        sql,
        *compiled.args(now, member_ids),
        tenant_id,
        dimension,
        version,
        exclusive,
        list(times),
        list(times.values()),
        *extra,
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


async def lock_dimension(conn: Connection, tenant_id: str, dimension: str) -> None:
    """Serialises recomputes of one dimension until the transaction ends (an advisory lock)."""
    await conn.fetchval(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        f"tagging.recompute/{tenant_id}/{dimension}",
    )


async def lock_members(conn: Connection, member_ids: list[str]) -> None:
    """Serialises tag evaluation per member: a second writer re-reads facts after the first commits."""
    await conn.execute(
        """SELECT 1 FROM tagging.members WHERE member_id = ANY($1::text[])
           ORDER BY member_id FOR NO KEY UPDATE""",
        member_ids,
    )


# Record time too (migration 0015): a row written before it was recorded when it began.
_MEMBER_TAG_COLUMNS = """id, member_id, dimension, value, definition_version, source, valid_from, valid_to,
    set_by, reason, removed_by, removed_reason, coalesce(record_time, valid_from) AS record_time,
    NULL::timestamptz AS supersede_time"""


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
