"""SQL of tag history on two time axes (migration 0015): rewriting a dimension's past from its
rules, and reading what MemberOps believed at a moment. Every function runs on a connection
already inside a tenant transaction.

A rewrite never touches the present and never edits a row in place except to re-date the open
row's start: every other change (a row deleted, clipped or split) first copies the old version to
member_tags_superseded, so `known_at` still reads the belief it replaced. It writes no feed
entries: a corrected past is history, not news.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from runtime.db import Connection

_RULE_SOURCE = 1
# Types of the parameters rewrite_at adds after the compiled query's: tenant, dimension, version,
# exclusive, now.
_EXTRA = ("text", "text", "int", "boolean", "timestamptz")
_READ_COLUMNS = """id, member_id, dimension, value, definition_version, source, valid_from, valid_to,
    set_by, reason, removed_by, removed_reason"""

# From `samples` (member_id, t, tag_values: what the rules gave the member at instant t) and the
# member's rows `rows` (each with `s`, the member's first instant): the window [s, e) whose history
# is replaced, the new history as islands of equal value, and the writes. `{reach}` is how far the
# first instant's window may reach before the present (SQL over `b`, the member's `bounds`).
#
# Each old row touching the window keeps its parts outside it (left of s, right of e); inside, the
# samples hold, each until the next instant (the last until e); adjacent parts of one value merge.
# Old rows equal to a final island stay; an open row otherwise only has its start re-dated (the
# present keeps its row and id); other changed rows are deleted and the islands not already stored
# inserted, closed. Deleted and re-dated rows are archived first, except versions this clock wrote
# (an earlier rewrite in the same transaction: never believed by anyone else).
_REWRITE = """
bounds AS (
    SELECT r.member_id,
           min(least(CASE WHEN r.valid_from > r.s THEN r.valid_from END,
                     CASE WHEN r.valid_to > r.s THEN r.valid_to END)) AS next_b,
           min(r.valid_from) FILTER (WHERE r.valid_to IS NULL AND r.valid_from > r.s) AS open_start
    FROM rows r GROUP BY r.member_id
),
win AS (
    SELECT st.member_id, st.s, least({now}, {reach}, b.open_start) AS e
    FROM starts st LEFT JOIN bounds b USING (member_id)
),
aff AS (
    SELECT r.*, w.e FROM rows r JOIN win w USING (member_id)
    WHERE w.e > w.s AND r.valid_from <= w.e
),
fresh AS (
    SELECT sm.member_id, v.value, sm.t AS f, least(w.e, sm.next_t) AS t
    FROM (SELECT x.member_id, x.t, x.tag_values,
                 lead(x.t) OVER (PARTITION BY x.member_id ORDER BY x.t) AS next_t
          FROM samples x) sm
    JOIN win w USING (member_id)
    CROSS JOIN LATERAL unnest(sm.tag_values) AS v(value)
    WHERE w.e > w.s AND sm.t < w.e
),
pieces AS (
    SELECT a.member_id, a.value, a.valid_from AS f, a.s AS t, a.definition_version AS version, a.exclusive
    FROM aff a WHERE a.valid_from < a.s
    UNION ALL
    SELECT a.member_id, a.value, greatest(a.valid_from, a.e), a.valid_to, a.definition_version, a.exclusive
    FROM aff a WHERE a.valid_to IS NULL OR a.valid_to > a.e
    UNION ALL
    SELECT f.member_id, f.value, f.f, f.t, {version}, {exclusive} FROM fresh f
),
islands AS (
    SELECT p.*, sum(CASE WHEN p.f = p.prev_t THEN 0 ELSE 1 END)
                    OVER (PARTITION BY p.member_id, p.value ORDER BY p.f, p.t NULLS LAST) AS island
    FROM (SELECT p.*, lag(p.t) OVER (PARTITION BY p.member_id, p.value ORDER BY p.f, p.t NULLS LAST) AS prev_t
          FROM pieces p) p
),
final AS (
    SELECT member_id, value, min(f) AS f, CASE WHEN bool_or(t IS NULL) THEN NULL ELSE max(t) END AS t,
           max(version) AS version, bool_or(exclusive) AS exclusive
    FROM islands GROUP BY member_id, value, island
),
gone AS (
    SELECT a.id, a.member_id, a.value, a.valid_from, a.valid_to FROM aff a
    WHERE NOT EXISTS (SELECT 1 FROM final x WHERE x.member_id = a.member_id AND x.value = a.value
                      AND x.f = a.valid_from AND x.t IS NOT DISTINCT FROM a.valid_to)
),
moved AS (
    SELECT g.id, g.valid_from AS old_from, x.f, x.version FROM gone g
    JOIN final x ON x.member_id = g.member_id AND x.value = g.value AND x.t IS NULL
    WHERE g.valid_to IS NULL
),
added AS (
    SELECT x.* FROM final x
    WHERE x.t IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM aff a WHERE a.member_id = x.member_id AND a.value = x.value
                      AND a.valid_from = x.f AND a.valid_to = x.t)
),
archived AS (
    INSERT INTO tagging.member_tags_superseded
        (tenant_id, id, member_id, dimension, value, definition_version, source, exclusive, valid_from,
         valid_to, set_by, reason, removed_by, removed_reason, record_time, supersede_time)
    SELECT t.tenant_id, t.id, t.member_id, t.dimension, t.value, t.definition_version, t.source, t.exclusive,
           t.valid_from, t.valid_to, t.set_by, t.reason, t.removed_by, t.removed_reason, t.record_time, {now}
    FROM tagging.member_tags t
    WHERE t.id = ANY(ARRAY(SELECT g.id FROM gone g)) AND t.record_time IS DISTINCT FROM {now}
    RETURNING 1
),
-- Guarded by the shape read: a row a concurrent refresh closed meanwhile is left as it is now.
updated AS (
    UPDATE tagging.member_tags t SET valid_from = mv.f, definition_version = mv.version, record_time = {now}
    FROM moved mv WHERE t.id = mv.id AND t.valid_to IS NULL AND t.valid_from = mv.old_from
    RETURNING 1
),
deleted AS (
    DELETE FROM tagging.member_tags t USING gone g
    WHERE t.id = g.id AND g.valid_to IS NOT NULL AND t.valid_from = g.valid_from AND t.valid_to = g.valid_to
    RETURNING 1
),
inserted AS (
    INSERT INTO tagging.member_tags (tenant_id, member_id, dimension, value, definition_version, source,
                                     exclusive, valid_from, valid_to, record_time)
    SELECT {tenant}, x.member_id, {dimension}, x.value, x.version, {source}, x.exclusive, x.f, x.t, {now}
    FROM added x
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) + (SELECT count(*) FROM updated) AS added,
       (SELECT count(*) FROM deleted) AS removed, (SELECT count(*) FROM archived) AS archived"""


def _rewrite(now: str, reach: str, tenant: str, dimension: str, version: str, exclusive: str) -> str:
    return _REWRITE.format(
        now=now,
        reach=reach,
        tenant=tenant,
        dimension=dimension,
        version=version,
        exclusive=exclusive,
        source=_RULE_SOURCE,
    )


async def rewrite_at(
    conn: Connection,
    tenant_id: str,
    compiled: Any,
    as_of: dt.datetime,
    now: dt.datetime,
    dimension: str,
    version: int,
    exclusive: bool,
) -> tuple[int, int]:
    """Evaluates an unfiltered dimension at `as_of` for every member registered by then and
    splices what it finds into their history: each value holds from `as_of` until the member's next
    recorded change of the dimension (the first valid_from or valid_to after it), at most until
    the present (the start of the open row, else `now`). Returns (rows written, rows removed).

    So `as_of` = t1 < t2 < ... in turn leaves each tᵢ's values over [tᵢ, tᵢ₊₁) wherever the
    history had no change recorded between them (as after an import), and what held at `as_of`
    and still holds now stays one row."""
    n = len(compiled.params)
    tenant, dim, ver, excl, now_p = (f"${n + i}::{c}" for i, c in enumerate(_EXTRA, start=1))
    sql = f"""
WITH computed AS ({compiled.sql}),
samples AS (
    SELECT c.member_id, $1::timestamptz AS t, c.tag_values FROM computed c
    JOIN tagging.members mm ON mm.member_id = c.member_id
    WHERE mm.register_time IS NULL OR mm.register_time <= $1::timestamptz
),
starts AS (SELECT member_id, $1::timestamptz AS s FROM samples),
rows AS (
    SELECT t.id, t.member_id, t.value, t.valid_from, t.valid_to, t.definition_version, t.exclusive,
           $1::timestamptz AS s
    FROM tagging.member_tags t
    WHERE t.dimension = {dim} AND t.source = {_RULE_SOURCE}
      AND (t.valid_to IS NULL OR t.valid_to >= $1::timestamptz)
),
{_rewrite(now_p, "b.next_b", tenant, dim, ver, excl)}"""
    # No nested loops (for the rest of the transaction, which this statement ends): the planner
    # estimates a dimension's rows from member_tags statistics taken before its recent writes (one
    # row for a new dimension), and on that estimate it nested the loops joining the rewrite's CTEs,
    # comparing every member's rows with every other's (9M comparisons for 3,000 members, a minute
    # for 20,000; 0.7 s with hash joins).
    await conn.execute("SET LOCAL enable_nestloop = off")
    row = await conn.fetchrow(sql, *compiled.args(as_of), tenant_id, dimension, version, exclusive, now)
    assert row is not None
    return int(row["added"]), int(row["removed"])


@dataclass(frozen=True)
class Samples:
    """What a filtered dimension's rules gave members at instants: (member, instant, values)."""

    dimension: str
    version: int
    exclusive: bool
    found: tuple[tuple[str, dt.datetime, tuple[str, ...]], ...]

    def of(self, member_ids: Collection[str]) -> Samples:
        return dataclasses.replace(self, found=tuple(f for f in self.found if f[0] in member_ids))


async def samples_at(
    conn: Connection,
    compiled: Any,
    instants: Mapping[str, Sequence[dt.datetime]],
    now: dt.datetime,
    dimension: str,
    version: int,
    exclusive: bool,
) -> Samples:
    """Evaluates a filtered dimension for each member at each of its `instants` before `now` (and
    not before its registration), in one read: the compiled query runs once per (member, instant)
    beside each other. Reads only, so the expensive part of a correction holds no transaction id
    (which would hold back every feed reader while it runs)."""
    assert compiled.member_filter == "$2::text[]", "a filtered dimension takes its members as $2"
    pairs = [(member_id, t) for member_id, times in instants.items() for t in sorted(set(times)) if t < now]
    if not pairs:
        return Samples(dimension, version, exclusive, ())
    # Each (member, instant) evaluates the compiled query with its own time and member.
    lateral = compiled.sql.replace("$1::timestamptz", "i.t").replace("$2::text[]", "ARRAY[i.member_id]")
    n = len(compiled.params)
    rows = await conn.fetch(
        f"""SELECT i.member_id, i.t, c.tag_values
            FROM unnest(${n + 1}::text[], ${n + 2}::timestamptz[]) AS i(member_id, t)
            CROSS JOIN LATERAL ({lateral}) c
            JOIN tagging.members mm ON mm.member_id = i.member_id
            -- $1 and $2 are the lateral's own now; named so the statement still types them.
            WHERE (mm.register_time IS NULL OR mm.register_time <= i.t)
              AND $1::timestamptz IS NOT NULL AND $2::text[] IS NOT NULL""",
        *compiled.args(now, sorted(instants)),
        [m for m, _ in pairs],
        [t for _, t in pairs],
    )
    found = tuple((row["member_id"], row["t"], tuple(row["tag_values"])) for row in rows)
    return Samples(dimension, version, exclusive, found)


async def rewrite_since(
    conn: Connection, tenant_id: str, samples: Samples, now: dt.datetime
) -> tuple[int, int]:
    """Rewrites each sampled member's history of the dimension from its first instant up to the
    present (the start of its open row, else `now`) from its samples, each value holding until the
    member's next instant. Returns (rows written, rows removed)."""
    if not samples.found:
        return 0, 0
    flat = [(m, t, v) for m, t, values in samples.found for v in (values or (None,))]
    sql = f"""
WITH samples AS (
    SELECT u.member_id, u.t, array_remove(array_agg(u.value), NULL) AS tag_values
    FROM unnest($7::text[], $8::timestamptz[], $9::text[]) AS u(member_id, t, value)
    GROUP BY u.member_id, u.t
),
starts AS (SELECT member_id, min(t) AS s FROM samples GROUP BY member_id),
rows AS (
    SELECT t.id, t.member_id, t.value, t.valid_from, t.valid_to, t.definition_version, t.exclusive, st.s
    FROM tagging.member_tags t JOIN starts st USING (member_id)
    WHERE t.member_id = ANY($2::text[]) AND t.dimension = $4::text AND t.source = {_RULE_SOURCE}
      AND (t.valid_to IS NULL OR t.valid_to >= st.s)
),
{_rewrite("$1::timestamptz", "$1::timestamptz", "$3::text", "$4::text", "$5::int", "$6::boolean")}"""
    row = await conn.fetchrow(
        sql,
        now,
        sorted({m for m, _, _ in samples.found}),
        tenant_id,
        samples.dimension,
        samples.version,
        samples.exclusive,
        [m for m, _, _ in flat],
        [t for _, t, _ in flat],
        [v for _, _, v in flat],
    )
    assert row is not None
    return int(row["added"]), int(row["removed"])


async def boundaries_since(
    conn: Connection, dimension: str, since: Mapping[str, dt.datetime]
) -> dict[str, list[dt.datetime]]:
    """Each member's recorded changes of the dimension after its time in `since`: instants a
    rewrite re-evaluates so a change recorded between two grid instants keeps its time."""
    rows = await conn.fetch(
        """SELECT q.member_id, b.t FROM unnest($1::text[], $2::timestamptz[]) AS q(member_id, since)
           JOIN tagging.member_tags t ON t.member_id = q.member_id AND t.dimension = $3
           CROSS JOIN LATERAL (VALUES (t.valid_from), (t.valid_to)) AS b(t)
           WHERE b.t > q.since""",
        list(since),
        list(since.values()),
        dimension,
    )
    found: dict[str, list[dt.datetime]] = {}
    for row in rows:
        found.setdefault(row["member_id"], []).append(row["t"])
    return found


_BELIEVED = f"""
SELECT {_READ_COLUMNS}, coalesce(record_time, valid_from) AS record_time, NULL::timestamptz AS supersede_time
FROM tagging.member_tags
WHERE member_id = $1 AND coalesce(record_time, valid_from) <= $3
UNION ALL
SELECT {_READ_COLUMNS}, coalesce(record_time, valid_from), supersede_time
FROM tagging.member_tags_superseded
WHERE member_id = $1 AND coalesce(record_time, valid_from) <= $3 AND supersede_time > $3"""


async def member_tags_believed(
    conn: Connection, member_id: str, as_of: dt.datetime, known_at: dt.datetime
) -> list[asyncpg.Record]:
    """The member's tags at `as_of` as MemberOps believed at `known_at`: the row versions recorded
    by then and not yet superseded, an end recorded after `known_at` read as not known yet."""
    return list(
        await conn.fetch(
            f"""SELECT * FROM ({_BELIEVED}) b
                WHERE b.valid_from <= $2 AND (b.valid_to IS NULL OR b.valid_to > $2 OR b.valid_to > $3)
                ORDER BY b.dimension, b.value""",
            member_id,
            as_of,
            known_at,
        )
    )


_SUPERSEDED_RANK = 2**62


async def tag_changes_with_superseded(
    conn: Connection, member_id: str, dimension: str, before: tuple[int, int] | None, limit: int
) -> list[asyncpg.Record]:
    """Holdings newest first as tag_changes lists them, each followed by the versions of it that
    corrections replaced (newest first); `rank` orders versions of one row (the current one
    highest) and, with `id`, is the page key."""
    before_id, before_rank = before if before is not None else (None, None)
    return list(
        await conn.fetch(
            f"""SELECT * FROM (
                    SELECT {_READ_COLUMNS}, coalesce(record_time, valid_from) AS record_time,
                           NULL::timestamptz AS supersede_time, {_SUPERSEDED_RANK}::bigint AS rank
                    FROM tagging.member_tags
                    WHERE ($1 = '' OR member_id = $1) AND ($2 = '' OR dimension = $2)
                      AND ($3::bigint IS NULL OR id <= $3)
                    UNION ALL
                    SELECT {_READ_COLUMNS}, coalesce(record_time, valid_from), supersede_time, archive_id
                    FROM tagging.member_tags_superseded
                    WHERE ($1 = '' OR member_id = $1) AND ($2 = '' OR dimension = $2)
                      AND ($3::bigint IS NULL OR id <= $3)
                ) c
                WHERE $3::bigint IS NULL OR (c.id, c.rank) < ($3::bigint, $4::bigint)
                ORDER BY c.id DESC, c.rank DESC LIMIT $5""",
            member_id,
            dimension,
            before_id,
            before_rank,
            limit,
        )
    )
