"""SQL of the tag statistics: how many members hold each value, now or at a past moment, read
from one snapshot.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class HeldCounts:
    """Members now, and per dimension the members holding any value and each value held."""

    member_count: int
    covered: dict[str, int]
    by_value: dict[str, dict[str, int]]


# One statement, so the member count and the tag counts come from one snapshot. A member holds a
# value at most once at a time (index member_tags_holders), so per value the distinct count is
# the row count; per dimension (the grouping set without value) it counts each member once.
_HELD_COUNTS = """
SELECT NULL::text AS dimension, NULL::text AS value, count(*) AS members FROM tagging.members
UNION ALL
SELECT dimension, CASE WHEN GROUPING(value) = 0 THEN value END, count(DISTINCT member_id)
FROM tagging.member_tags
WHERE valid_to IS NULL AND dimension = ANY($1::text[])
GROUP BY GROUPING SETS ((dimension, value), (dimension))
"""

# The same at a moment of valid time: the members who had joined by then (join_time: registered,
# else first recorded; index members_joined), and the holdings whose [valid_from, valid_to) holds
# it, as GetMemberTags(as_of) reads them. No index serves a past moment: the dimensions' history
# rows are scanned (the console asks for a few dimensions a few times per page).
_HELD_COUNTS_AT = """
SELECT NULL::text AS dimension, NULL::text AS value, count(*) AS members FROM tagging.members
WHERE join_time <= $2::timestamptz
UNION ALL
SELECT dimension, CASE WHEN GROUPING(value) = 0 THEN value END, count(DISTINCT member_id)
FROM tagging.member_tags
WHERE dimension = ANY($1::text[])
  AND valid_from <= $2::timestamptz AND (valid_to IS NULL OR valid_to > $2::timestamptz)
GROUP BY GROUPING SETS ((dimension, value), (dimension))
"""


async def held_counts(
    conn: Connection, dimensions: Sequence[str], as_of: dt.datetime | None = None
) -> HeldCounts:
    """How many members there are, and how many hold the values of `dimensions`: now, or at
    `as_of` in valid time."""
    member_count = 0
    covered: dict[str, int] = {}
    by_value: dict[str, dict[str, int]] = {}
    rows = (
        await conn.fetch(_HELD_COUNTS, list(dimensions))
        if as_of is None
        else await conn.fetch(_HELD_COUNTS_AT, list(dimensions), as_of)
    )
    for row in rows:
        if row["dimension"] is None:
            member_count = row["members"]
        elif row["value"] is None:
            covered[row["dimension"]] = row["members"]
        else:
            by_value.setdefault(row["dimension"], {})[row["value"]] = row["members"]
    return HeldCounts(member_count, covered, by_value)
