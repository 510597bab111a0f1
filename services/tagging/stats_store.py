"""SQL of the tag statistics: how many members hold each value, read from one snapshot.
Every function runs on a connection already inside a tenant transaction."""

from __future__ import annotations

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


async def held_counts(conn: Connection, dimensions: Sequence[str]) -> HeldCounts:
    """How many members there are, and how many hold the current values of `dimensions`."""
    member_count = 0
    covered: dict[str, int] = {}
    by_value: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(_HELD_COUNTS, list(dimensions)):
        if row["dimension"] is None:
            member_count = row["members"]
        elif row["value"] is None:
            covered[row["dimension"]] = row["members"]
        else:
            by_value.setdefault(row["dimension"], {})[row["value"]] = row["members"]
    return HeldCounts(member_count, covered, by_value)
