"""Runs a `bitmap_plan.Plan` against one tenant's bitmaps and the read views: the members of an
audience as a bitmap of member numbers, or None when the plan is not worth it for this evaluation
(the caller then runs today's statement, which gives the same members).

Bitmaps first. Then, while the candidates are more than the residual should test one by one, each
driver's members (those the rule wants, then those it does not), read from its summary's index and
turned into numbers in memory, narrow them. Then the residual statement (member-filtered: every
subquery probes one member's rows) runs over what is left, in one statement per group of candidates
(those in an `any`'s bitmap branches skip that `any`): a statement hashes what it cannot probe per
member (a tag inside an `any`, say) once, and in chunks would hash it again for each.

The bounds, measured on the 1M-member bench: a member-filtered residual costs 20-50 us a candidate
(probes of recency summaries, tags and orders), so beyond `RESIDUAL_LIMIT` candidates it would cost
more than today's planner-chosen statement (about 150 ms for the bench's five conditions, which
hashes and anti-joins instead of probing); a driver is read only when the planner expects it to be
at most `DRIVER_LIMIT` rows and the drivers can leave few enough candidates for that bound.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol

from pyroaring import BitMap

from runtime.db import Connection
from services.audience import bitmap_plan, store

# Candidates the residual statement evaluates at most; more, and today's statement runs instead.
RESIDUAL_LIMIT = 5_000
# ... and at most this share of the tenant's members: probing nearly every member one by one costs
# several times today's statement over all of them (hash joins), which a small tenant pays in
# milliseconds. In a full test run, a console page counting forty audiences of a tenant of a few
# thousand members spent seconds a count on member-filtered residuals.
RESIDUAL_SHARE = 10
# Rows a driver may be expected to read; a bigger one is left to the residual statement. Each row
# costs about 1.2 us (sent over as one text, split, looked up in memory): on the 1M bench the
# five-condition count read 60k wanted and 248k unwanted members in 360 ms where today's statement
# took 245 ms, so a driver is worth reading only when it is small.
DRIVER_LIMIT = 50_000


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
    pending = set(range(len(plan.parts)))
    limit = residual_limit(bitmaps)
    if len(candidates) > limit and pending:
        drivers = [i for i in pending if plan.parts[i].driver is not None]
        sizes = {i: await _estimated(conn, plan.parts[i], now) for i in drivers}
        readable = [i for i in drivers if sizes[i] <= DRIVER_LIMIT]
        # The fewest candidates the drivers could leave: if even that is too many for the statement
        # the rest needs, reading them would be wasted.
        wanted = [sizes[i] for i in readable if _positive(plan, i)]
        unwanted = sum(sizes[i] for i in readable if not _positive(plan, i))
        if pending - set(readable) and min([len(candidates), *wanted]) - unwanted > limit:
            return None
        # The members a rule wants first (the fewest first), then those it does not.
        for i in sorted(readable, key=lambda i: (not _positive(plan, i), sizes[i])):
            if pending - set(readable) and len(candidates) <= limit:
                break  # few enough: the statement tests the remaining drivers with the rest
            members = await _members(conn, plan.parts[i], bitmaps, now)
            candidates = candidates & members if _positive(plan, i) else candidates - members
            pending.discard(i)
    if not pending:
        return candidates
    if len(candidates) > limit:
        return None
    return await residual(conn, plan, pending, bitmaps, candidates, now)


def residual_limit(bitmaps: Bitmaps) -> int:
    """How many candidates the residual statement may test: RESIDUAL_LIMIT, and at most one in
    RESIDUAL_SHARE of the tenant's members."""
    return min(RESIDUAL_LIMIT, len(bitmaps.universe) // RESIDUAL_SHARE)


async def residual(
    conn: Connection,
    plan: bitmap_plan.Plan,
    pending: set[int],
    bitmaps: Bitmaps,
    candidates: BitMap,
    now: dt.datetime,
) -> BitMap:
    """The candidates the pending parts put in: a candidate in a part's free bitmap passes that part
    without SQL, so candidates are grouped by the parts they need the statement for, one statement
    (of just those parts) a group."""
    groups: dict[frozenset[int], BitMap] = {frozenset(): candidates}
    for i in sorted(pending):
        free = plan.parts[i].free
        regrouped: dict[frozenset[int], BitMap] = {}
        held = free.evaluate(bitmaps) if free is not None else BitMap()
        for needed, members in groups.items():
            for key, share in ((needed, members & held), (needed | {i}, members - held)):
                if share:
                    regrouped[key] = regrouped.get(key, BitMap()) | share
        groups = regrouped
    kept = BitMap()
    for needed, members in groups.items():
        if not needed:
            kept |= members
            continue
        compiled = plan.statement(needed)
        sql = f"SELECT s.member_id FROM ({compiled.check_sql()}) AS s WHERE s.is_member"
        rows = await conn.fetch(sql, *compiled.args(now, bitmaps.member_ids(members)))
        kept |= bitmaps.numbers_of(row["member_id"] for row in rows)
    return kept


def _positive(plan: bitmap_plan.Plan, i: int) -> bool:
    driver = plan.parts[i].driver
    return driver is not None and driver.positive


async def _estimated(conn: Connection, part: bitmap_plan.Part, now: dt.datetime) -> float:
    assert part.driver is not None
    return await store.estimated_rows(conn, part.driver.sql, part.driver.args(now))


async def _members(conn: Connection, part: bitmap_plan.Part, bitmaps: Bitmaps, now: dt.datetime) -> BitMap:
    """A driver's members as numbers. Their ids come as one text (member ids hold no line breaks):
    a row per member would cost asyncpg about four times as long."""
    assert part.driver is not None
    sql = f"SELECT string_agg(d.member_id, E'\\n') FROM ({part.driver.sql}) AS d"
    ids = await conn.fetchval(sql, *part.driver.args(now))
    return bitmaps.numbers_of(ids.split("\n")) if ids else BitMap()
