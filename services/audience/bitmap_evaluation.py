"""Runs a `bitmap_plan.Plan` against one tenant's bitmaps and the read views: the members of an
audience as a bitmap of member numbers, or None when the plan is not worth it for this evaluation
(the caller then runs today's statement, which gives the same members).

Bitmaps first. Then, while the candidates are more than the residual should test one by one, each
driver's members, read from its summary's index and turned into numbers in memory, narrow
them. Then the residual statement (member-filtered: every subquery probes one member's rows) runs
over what is left, all in one statement: a statement hashes what it cannot probe per member (a tag
inside an `any`, say) once, and in chunks would hash it again for each.

The bounds, measured on the 1M-member bench: a member-filtered residual costs 20-50 us a candidate
(probes of recency summaries, tags and orders), so beyond `RESIDUAL_LIMIT` candidates it would cost
more than today's planner-chosen statement (about 150 ms for the bench's five conditions, which
hashes and anti-joins instead of probing); and a driver is read only when the planner expects its
members, thinned by the bitmap conjuncts, to come within that bound.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol

from pyroaring import BitMap

from runtime.db import Connection
from services.audience import bitmap_plan, compiler, store

# Candidates the residual statement evaluates at most; more, and today's statement runs instead.
RESIDUAL_LIMIT = 5_000
# Rows a driver may be expected to read: each is a member id sent over and turned into a number.
DRIVER_LIMIT = 20_000


class Bitmaps(bitmap_plan.Bitmaps, Protocol):
    """What evaluation reads of one tenant's bitmaps (`bitmaps.TenantBitmaps`)."""

    @property
    def bucketed_fields(self) -> frozenset[str]: ...

    def member_ids(self, numbers: BitMap) -> list[str]:
        """The ids of `numbers`, in ascending number order."""
        ...

    def numbers_of(self, member_ids: Iterable[str]) -> BitMap:
        """The numbers of the known members among `member_ids`, from memory."""
        ...


async def select(
    conn: Connection, plan: bitmap_plan.Plan, bitmaps: Bitmaps, now: dt.datetime
) -> BitMap | None:
    """The audience's members as numbers, or None when today's statement should answer."""
    candidates = plan.candidates(bitmaps)
    if plan.checked is None:
        return candidates
    for driver in plan.drivers:
        if len(candidates) <= RESIDUAL_LIMIT:
            # Few enough to test the drivers member by member with the rest.
            return await residual(conn, plan.checked, bitmaps, candidates, now)
        estimated = await store.estimated_rows(conn, driver.sql, driver.args(now))
        # What the driver would leave, were its members spread like everyone's.
        left = estimated * len(candidates) / max(len(bitmaps.universe), 1)
        if estimated > DRIVER_LIMIT or (plan.residual is not None and left > RESIDUAL_LIMIT):
            return None
        rows = await conn.fetch(driver.sql, *driver.args(now))
        candidates &= bitmaps.numbers_of(row["member_id"] for row in rows)
    if plan.residual is None:
        return candidates
    if len(candidates) > RESIDUAL_LIMIT:
        return None
    return await residual(conn, plan.residual, bitmaps, candidates, now)


async def residual(
    conn: Connection,
    compiled: compiler.Compiled,
    bitmaps: Bitmaps,
    candidates: BitMap,
    now: dt.datetime,
) -> BitMap:
    """The candidates the member-filtered statement `compiled` puts in."""
    if not candidates:
        return candidates
    sql = f"SELECT s.member_id FROM ({compiled.check_sql()}) AS s WHERE s.is_member"
    rows = await conn.fetch(sql, *compiled.args(now, bitmaps.member_ids(candidates)))
    return bitmaps.numbers_of(row["member_id"] for row in rows)
