"""Runs a `bitmap_plan.Plan` against one tenant's bitmaps and the read views: the members of an
audience as a bitmap of member numbers, or None when the plan is not worth it for this evaluation
(the caller then runs today's statement, which gives the same members).

Bitmaps first: the tag and profile conjuncts, then each summary test from the recency summaries'
day bitmaps (`fact_windows`), which decide it for every member but the few whose latest fact lies
on a day at the window's edges. Then the residual statement (every subquery probes one member's
rows) runs over what is left, once, each member tested only on the parts it needs (those in an
`any`'s bitmap branches skip that `any`, those a summary test's days decided skip that test).

The bound, measured on the 1M-member bench: a member-filtered residual costs 20-50 us a candidate
(probes of recency summaries, tags and orders), so beyond `RESIDUAL_LIMIT` candidates it would cost
more than today's planner-chosen statement (about 150 ms for the bench's five conditions, which
hashes and anti-joins instead of probing).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Protocol

from pyroaring import BitMap

from runtime.db import Connection
from services.audience import bitmap_plan, fact_windows

# Candidates the residual statement evaluates at most; more, and today's statement runs instead.
RESIDUAL_LIMIT = 5_000
# ... and at most this share of the tenant's members: probing nearly every member one by one costs
# several times today's statement over all of them (hash joins), which a small tenant pays in
# milliseconds. In a full test run, a console page counting forty audiences of a tenant of a few
# thousand members spent seconds a count on member-filtered residuals.
RESIDUAL_SHARE = 10


class Bitmaps(bitmap_plan.Bitmaps, Protocol):
    """What evaluation reads of one tenant's bitmaps (`bitmaps.TenantBitmaps`)."""

    @property
    def bucketed_fields(self) -> frozenset[str]: ...

    def member_ids(self, numbers: BitMap) -> list[str]:
        """The ids of `numbers`, in ascending number order."""
        ...

    def windows(self, window: fact_windows.Window, now: dt.datetime) -> tuple[BitMap, BitMap]:
        """(inside, undecided) of a summary test (`fact_windows.FactWindows.split`)."""
        ...


async def select(
    conn: Connection, plan: bitmap_plan.Plan, bitmaps: Bitmaps, now: dt.datetime
) -> BitMap | None:
    """The audience's members as numbers, or None when today's statement should answer."""
    candidates = plan.candidates(bitmaps)
    pending = set(range(len(plan.parts)))
    # Summary tests: the members each leaves to the statement (the rest it decided).
    undecided: dict[int, BitMap] = {}
    for i, part in enumerate(plan.parts):
        if part.driver is None:
            continue
        inside, unsure = bitmaps.windows(part.driver.window, now)
        if part.driver.positive:
            candidates &= inside | unsure
        else:
            candidates -= inside
        undecided[i] = unsure
    for i, unsure in undecided.items():
        if unsure.intersect(candidates):
            undecided[i] = unsure & candidates
        else:
            pending.discard(i)
    if not pending:
        return candidates
    groups = grouped(plan, pending, bitmaps, candidates, undecided)
    if sum(len(members) for needed, members in groups.items() if needed) > residual_limit(bitmaps):
        return None
    return await residual(conn, plan, groups, bitmaps, now)


def residual_limit(bitmaps: Bitmaps) -> int:
    """How many members the residual statements may test: RESIDUAL_LIMIT, and at most one in
    RESIDUAL_SHARE of the tenant's members."""
    return min(RESIDUAL_LIMIT, len(bitmaps.universe) // RESIDUAL_SHARE)


def grouped(
    plan: bitmap_plan.Plan,
    pending: set[int],
    bitmaps: Bitmaps,
    candidates: BitMap,
    undecided: Mapping[int, BitMap],
) -> dict[frozenset[int], BitMap]:
    """The candidates by the pending parts they need the statement for: a candidate in a part's
    free bitmap, or one a summary test decided (not in `undecided` of its part), passes that part
    without SQL."""
    groups: dict[frozenset[int], BitMap] = {frozenset(): candidates}
    for i in sorted(pending):
        free = plan.parts[i].free
        regrouped: dict[frozenset[int], BitMap] = {}
        if i in undecided:
            held = candidates - undecided[i]
        else:
            held = free.evaluate(bitmaps) if free is not None else BitMap()
        for needed, members in groups.items():
            for key, share in ((needed, members & held), (needed | {i}, members - held)):
                if share:
                    regrouped[key] = regrouped.get(key, BitMap()) | share
        groups = regrouped
    return groups


async def residual(
    conn: Connection,
    plan: bitmap_plan.Plan,
    groups: Mapping[frozenset[int], BitMap],
    bitmaps: Bitmaps,
    now: dt.datetime,
) -> BitMap:
    """The members of `groups` (`grouped`) that pass the parts each group needs: those needing none,
    and those the plan's one statement passes, each tested on its group's parts."""
    kept = BitMap(groups.get(frozenset(), ()))
    numbers: list[int] = []
    masks: list[str] = []
    for needed, members in groups.items():
        if needed:
            numbers += members
            masks += ["".join("1" if i in needed else "0" for i in range(len(plan.parts)))] * len(members)
    if numbers:
        statement = plan.statement()
        kept |= BitMap(await conn.fetchval(statement.sql, *statement.args(now, numbers, masks)) or ())
    return kept
