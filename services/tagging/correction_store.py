"""SQL of tagging.history_corrections (migration 0015): members whose tag history a back-dated
fact made wrong, from when, and which inputs changed. Every function runs on a connection already
inside a tenant transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection

# A fact this much older than the refresh that handles it corrects the history: below it the
# valid time of the refresh's change is off by less than any rule can tell (windows are whole days),
# and live facts commonly arrive that late (payment callbacks, retried requests, app events sent
# after a few minutes offline), each of which would otherwise archive a version for nothing.
TOLERANCE = dt.timedelta(minutes=5)
# Between the instants a correction evaluates the rules at, from the earliest fact on.
STEP = dt.timedelta(days=1)


@dataclass(frozen=True)
class Owed:
    member_id: str
    since: dt.datetime
    inputs: int
    seq: int


def owed_corrections(
    fact_times: Mapping[str, dt.datetime], bits: Mapping[str, int], now: dt.datetime, fact_bits: int
) -> dict[str, tuple[dt.datetime, int]]:
    """The members a refresh at `now` owes a correction: their facts (of `fact_bits` inputs: the
    ones that carry their own time) happened more than TOLERANCE before it."""
    return {
        member_id: (time, bits.get(member_id, 0) & fact_bits)
        for member_id, time in fact_times.items()
        if time < now - TOLERANCE and bits.get(member_id, 0) & fact_bits
    }


async def queue_corrections(
    conn: Connection, tenant_id: str, owed: Mapping[str, tuple[dt.datetime, int]]
) -> None:
    """Owes these members a correction from their time on; merged into a row already owed (the
    earliest time, every input)."""
    if not owed:
        return
    members = sorted(owed)
    await conn.execute(
        """INSERT INTO tagging.history_corrections AS q (tenant_id, member_id, since, inputs)
           SELECT $1, u.member_id, u.since, u.inputs
           FROM unnest($2::text[], $3::timestamptz[], $4::int[]) AS u(member_id, since, inputs)
           ORDER BY u.member_id
           ON CONFLICT (tenant_id, member_id)
           DO UPDATE SET since = least(q.since, excluded.since), inputs = q.inputs | excluded.inputs,
                         seq = nextval('tagging.history_corrections_seq')""",
        tenant_id,
        members,
        [owed[m][0] for m in members],
        [owed[m][1] for m in members],
    )


async def pending_corrections(conn: Connection, limit: int) -> list[Owed]:
    """The longest-owed corrections first."""
    rows = await conn.fetch(
        "SELECT member_id, since, inputs, seq FROM tagging.history_corrections ORDER BY seq LIMIT $1", limit
    )
    return _owed(rows)


async def owed_of(conn: Connection, member_ids: Sequence[str]) -> list[Owed]:
    """The queue rows of these members."""
    rows = await conn.fetch(
        """SELECT member_id, since, inputs, seq FROM tagging.history_corrections
           WHERE member_id = ANY($1::text[])""",
        list(member_ids),
    )
    return _owed(rows)


async def settle_corrections(conn: Connection, done: Sequence[Owed]) -> None:
    """Deletes the rows a correction handled; a row a later fact bumped (a higher seq) stays owed."""
    await conn.execute(
        """DELETE FROM tagging.history_corrections q
           USING unnest($1::text[], $2::bigint[]) AS s(member_id, seq)
           WHERE q.member_id = s.member_id AND q.seq <= s.seq""",
        [o.member_id for o in done],
        [o.seq for o in done],
    )


def _owed(rows: Sequence[asyncpg.Record]) -> list[Owed]:
    return [Owed(row["member_id"], row["since"], row["inputs"], row["seq"]) for row in rows]


def grid(since: dt.datetime, now: dt.datetime, step: dt.timedelta = STEP) -> list[dt.datetime]:
    """`since`, `since + step`, ... before `now`."""
    instants: list[dt.datetime] = []
    t = since
    while t < now:
        instants.append(t)
        t += step
    return instants
