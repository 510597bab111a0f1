"""The dispatcher's rows in the worker's schema (journeys migration 0004): its cursors over the two
feeds and the journey runs it started for entry events; and what it reads of the enrolments and of
the open cohorts (SQL only)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.db import Database

FEEDS = ("tagging", "audience")
# A run started for an entry event but not enrolled yet (its first activity has not run) still
# gets the member's later events; after this long without an enrolment it never will have one.
PENDING = dt.timedelta(days=1)


@dataclass(frozen=True)
class Dispatch:
    journey_key: str
    entry_event_id: str
    member_id: str
    workflow_id: str
    run_id: str


async def cursors(db: Database, tenant_id: str, dispatcher: str) -> dict[str, str]:
    """The stored cursor of each feed the dispatcher has one for."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT feed, cursor FROM journeys.dispatch_cursors WHERE tenant_id = $1 AND dispatcher = $2",
            tenant_id,
            dispatcher,
        )
    return {row["feed"]: row["cursor"] for row in rows}


async def start_cursors(
    db: Database, tenant_id: str, dispatcher: str, start: Mapping[str, str], now: dt.datetime
) -> dict[str, str]:
    """Stores `start` for the feeds that have no cursor yet; returns the stored cursors."""
    async with db.transaction(tenant_id) as conn:
        await conn.executemany(
            """INSERT INTO journeys.dispatch_cursors (tenant_id, dispatcher, feed, cursor, update_time)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
            [(tenant_id, dispatcher, feed, cursor, now) for feed, cursor in start.items()],
        )
    return await cursors(db, tenant_id, dispatcher)


@dataclass(frozen=True)
class CohortRun:
    """An open cohort (broadcast) a member is active in: its workflow and the version it runs."""

    workflow_id: str
    journey_key: str
    version: int


async def open_cohort_versions(
    db: Database, tenant_id: str, keys: Sequence[str], states: Sequence[str]
) -> list[tuple[str, int]]:
    """(journey, version) of every open cohort of the journeys (of `keys`, or all) in `states`."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT DISTINCT c.journey_key, c.version FROM journeys.cohorts c
               JOIN journeys.journey_states s ON s.tenant_id = c.tenant_id AND s.journey_key = c.journey_key
               WHERE c.tenant_id = $1 AND c.state = 'active' AND s.state = ANY($2::text[])
                 AND (cardinality($3::text[]) = 0 OR c.journey_key = ANY($3::text[]))
               ORDER BY c.journey_key, c.version""",
            tenant_id,
            list(states),
            list(keys),
        )
    return [(row["journey_key"], row["version"]) for row in rows]


@dataclass
class Members:
    """What the dispatcher knows of some members before it dispatches their events."""

    # (journey, member) pairs with a run going (enrolled and active, or started and not enrolled
    # yet) -> the run's workflow id, as recorded: signals go to it.
    running: dict[tuple[str, str], str] = field(default_factory=dict)
    # (journey, member) -> the member's last enrolment in the journey (`state`, `finish_time`).
    last: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    # (journey, entry event) pairs that already started a run or enrolled a member.
    entered: set[tuple[str, str]] = field(default_factory=set)
    # member -> the open cohorts the member is active in (see `cohort_runs`).
    cohorts: dict[str, list[CohortRun]] = field(default_factory=dict)


async def members(
    db: Database, tenant_id: str, member_ids: Sequence[str], event_ids: Sequence[str], now: dt.datetime
) -> Members:
    found = Members()
    if not member_ids:
        return found
    async with db.transaction(tenant_id, readonly=True) as conn:
        for row in await conn.fetch(
            """SELECT DISTINCT ON (journey_key, member_id) journey_key, member_id, state, finish_time,
                      workflow_id
               FROM journeys.enrolments WHERE tenant_id = $1 AND member_id = ANY($2::text[])
               ORDER BY journey_key, member_id, entry_number DESC""",
            tenant_id,
            list(member_ids),
        ):
            pair = (row["journey_key"], row["member_id"])
            found.last[pair] = {"state": row["state"], "finish_time": row["finish_time"]}
            if row["state"] == "active":
                found.running[pair] = row["workflow_id"]
        for row in await conn.fetch(
            """SELECT d.journey_key, d.member_id, d.workflow_id FROM journeys.dispatches d
               WHERE d.tenant_id = $1 AND d.member_id = ANY($2::text[]) AND d.dispatch_time > $3
                 AND NOT EXISTS (SELECT 1 FROM journeys.enrolments e
                                 WHERE e.tenant_id = d.tenant_id AND e.run_id = d.run_id)
               ORDER BY d.dispatch_time""",
            tenant_id,
            list(member_ids),
            now - PENDING,
        ):
            found.running[(row["journey_key"], row["member_id"])] = row["workflow_id"]
        for row in await conn.fetch(
            """SELECT journey_key, entry_event_id FROM journeys.dispatches
               WHERE tenant_id = $1 AND entry_event_id = ANY($2::text[])
               UNION
               SELECT journey_key, entry_event_id FROM journeys.enrolments
               WHERE tenant_id = $1 AND entry_event_id = ANY($2::text[])""",
            tenant_id,
            list(event_ids),
        ):
            found.entered.add((row["journey_key"], row["entry_event_id"]))
    return found


async def cohort_runs(
    db: Database, tenant_id: str, member_ids: Sequence[str], versions: Sequence[tuple[str, int]]
) -> dict[str, list[CohortRun]]:
    """member -> the open cohorts running one of `versions` (journey, version) the member is
    active in; only those versions, so a cohort opened since they were read takes the next round's
    events. Planned with its actual arguments each time (see cohort/store.py `transaction`): a
    generic plan over a cohort filling faster than its statistics follow took seconds (measured:
    1000 members of a 300,000-member cohort); the custom one finds them through cohort_members'
    primary key once the cohort's activities refreshed its statistics, and scans the cohort's due
    index until then."""
    found: dict[str, list[CohortRun]] = {}
    if not member_ids or not versions:
        return found
    async with db.transaction(tenant_id, readonly=True, plans="custom") as conn:
        for row in await conn.fetch(
            """SELECT m.member_id, c.workflow_id, c.journey_key, c.version
               FROM journeys.cohorts c
               JOIN journeys.cohort_members m ON m.tenant_id = c.tenant_id AND m.cohort_id = c.cohort_id
               WHERE c.tenant_id = $1 AND c.state = 'active'
                 AND (c.journey_key, c.version) IN (SELECT * FROM unnest($3::text[], $4::int[]))
                 AND m.member_id = ANY($2::text[]) AND m.state = 'active'
               ORDER BY c.cohort_id""",
            tenant_id,
            list(member_ids),
            [key for key, _ in versions],
            [version for _, version in versions],
        ):
            found.setdefault(row["member_id"], []).append(
                CohortRun(row["workflow_id"], row["journey_key"], row["version"])
            )
    return found


async def record_round(
    db: Database,
    tenant_id: str,
    dispatcher: str,
    before: Mapping[str, str],
    after: Mapping[str, str],
    dispatches: Sequence[Dispatch],
    now: dt.datetime,
) -> bool:
    """Records the round's dispatches and moves the cursors from `before` to `after`, in one
    transaction. False when another dispatcher of the same id moved them meanwhile (its round
    stands; this one's effects were the same, idempotent ones)."""
    async with db.transaction(tenant_id) as conn:
        await conn.executemany(
            """INSERT INTO journeys.dispatches (tenant_id, journey_key, entry_event_id, member_id,
                                                workflow_id, run_id, dispatch_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
            [
                (tenant_id, d.journey_key, d.entry_event_id, d.member_id, d.workflow_id, d.run_id, now)
                for d in dispatches
            ],
        )
        moved = 0
        for feed in FEEDS:
            if after[feed] == before[feed]:
                continue
            status = await conn.execute(
                """UPDATE journeys.dispatch_cursors SET cursor = $4, update_time = $5
                   WHERE tenant_id = $1 AND dispatcher = $2 AND feed = $3 AND cursor = $6""",
                tenant_id,
                dispatcher,
                feed,
                after[feed],
                now,
                before[feed],
            )
            moved += status == "UPDATE 1"
    return moved == sum(after[feed] != before[feed] for feed in FEEDS)
