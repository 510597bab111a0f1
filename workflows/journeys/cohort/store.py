"""Cohorts, their members and their batches in the worker's schema `journeys` (SQL only).

A cohort's members are its enrolment rows: where each member is in the journey (`position`, the
index of its next step) and from when it may go on (`due_time`). Everything a batch does to them is
set-based over arrays; the row of the batch (`cohort_batches`, keyed by the workflow's call number)
is written in the same transaction, so a retried call finds what the first attempt committed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg

from runtime.buckets import bucket_sql
from runtime.db import Connection, Database
from workflows.journeys import states


def transaction(
    db: Database, tenant_id: str, *, readonly: bool = False
) -> AbstractAsyncContextManager[Connection]:
    """A tenant transaction whose statements are planned with their actual arguments each time: a
    broadcast fills its tables faster than ANALYZE follows, and a plan cached while they were
    nearly empty would scan a whole cohort for each batch (measured: 3 s for 1000 rows of 100,000)."""
    return db.transaction(tenant_id, readonly=readonly, plans="custom")


# The due time of a member past its last step that waits for nothing more (only for the goal's
# window to end); asyncpg writes it as 'infinity'. One past its last step with another due time is
# still in the step's wait that ended its steps (a trailing wait), as a member journey sleeps in it.
WALKED = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Cohort:
    cohort_id: int
    journey_key: str
    version: int
    snapshot_id: str
    workflow_id: str
    first_run_id: str
    state: str

    @property
    def journey_run(self) -> str:
        """The message log's journey run of the cohort's sends (short: it is in a million keys)."""
        return f"cohort/{self.cohort_id}"


_COHORT = """SELECT cohort_id, journey_key, version, snapshot_id, workflow_id, first_run_id, state
             FROM journeys.cohorts"""


async def open_cohort(
    db: Database,
    tenant_id: str,
    journey_key: str,
    version: int,
    snapshot_id: str,
    workflow_id: str,
    first_run_id: str,
    now: dt.datetime,
) -> tuple[Cohort, bool] | str:
    """The cohort of (journey, snapshot), created for this workflow if there is none; True when it
    is this workflow's (created now, or by an earlier attempt of the same workflow run). When there
    is none, why none opens: only an active journey opens a cohort, and only of its live version;
    its state row is held FOR SHARE until the cohort's row commits, so a pause finds the cohort."""
    async with transaction(db, tenant_id) as conn:
        state = await states.read_state(conn, tenant_id, journey_key, lock="SHARE")
        refused = ""
        if state.state != "active":
            refused = "journey is not active"
        elif version != state.live_version:
            refused = f"version {version} is not live (version {state.live_version} is)"
        if refused:
            row = await conn.fetchrow(
                f"{_COHORT} WHERE journey_key = $1 AND snapshot_id = $2", journey_key, snapshot_id
            )
            if row is None:
                return refused
            cohort = Cohort(**dict(row))
            return cohort, (cohort.workflow_id, cohort.first_run_id) == (workflow_id, first_run_id)
        await conn.execute(
            """INSERT INTO journeys.cohorts (tenant_id, journey_key, version, snapshot_id, workflow_id,
                                             first_run_id, start_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (tenant_id, journey_key, snapshot_id) DO NOTHING""",
            tenant_id,
            journey_key,
            version,
            snapshot_id,
            workflow_id,
            first_run_id,
            now,
        )
        row = await conn.fetchrow(
            f"{_COHORT} WHERE journey_key = $1 AND snapshot_id = $2", journey_key, snapshot_id
        )
    assert row is not None
    cohort = Cohort(**dict(row))
    return cohort, (cohort.workflow_id, cohort.first_run_id) == (workflow_id, first_run_id)


async def get_cohort(conn: Connection, cohort_id: int) -> Cohort | None:
    row = await conn.fetchrow(f"{_COHORT} WHERE cohort_id = $1", cohort_id)
    return None if row is None else Cohort(**dict(row))


# --- batches -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    state: str
    figures: dict[str, int]
    detail: Any


async def lock_batch(conn: Connection, cohort_id: int, seq: int, part: int = 0) -> None:
    """Serialises the transactions of one part of a call (a retry running while a stalled attempt
    goes on)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 2))", f"cohort-batch:{cohort_id}:{seq}:{part}"
    )


async def get_batch(conn: Connection, cohort_id: int, seq: int, part: int = 0) -> Batch | None:
    row = await conn.fetchrow(
        """SELECT state, figures::text AS figures, detail::text AS detail FROM journeys.cohort_batches
           WHERE cohort_id = $1 AND seq = $2 AND part = $3""",
        cohort_id,
        seq,
        part,
    )
    if row is None:
        return None
    return Batch(row["state"], json.loads(row["figures"]), json.loads(row["detail"]))


async def batch_parts(conn: Connection, cohort_id: int, seq: int) -> dict[int, Batch]:
    """The parts a call has written so far, by part number."""
    rows = await conn.fetch(
        """SELECT part, state, figures::text AS figures, detail::text AS detail FROM journeys.cohort_batches
           WHERE cohort_id = $1 AND seq = $2 ORDER BY part""",
        cohort_id,
        seq,
    )
    return {r["part"]: Batch(r["state"], json.loads(r["figures"]), json.loads(r["detail"])) for r in rows}


async def save_batch(
    conn: Connection,
    tenant_id: str,
    cohort_id: int,
    seq: int,
    state: str,
    figures: Mapping[str, int],
    detail: Any,
    now: dt.datetime,
    part: int = 0,
) -> None:
    await conn.execute(
        """INSERT INTO journeys.cohort_batches AS b (tenant_id, cohort_id, seq, part, state, figures, detail,
                                                     create_time, update_time)
           VALUES ($1, $2, $3, $8, $4, $5::jsonb, $6::jsonb, $7, $7)
           ON CONFLICT (tenant_id, cohort_id, seq, part) DO UPDATE
           SET state = excluded.state, figures = excluded.figures, detail = excluded.detail,
               update_time = excluded.update_time""",
        tenant_id,
        cohort_id,
        seq,
        state,
        json.dumps(dict(figures), sort_keys=True),
        json.dumps(detail),
        now,
        part,
    )


async def batch_figures(conn: Connection, cohort_id: int, seq: int, part: int) -> tuple[str, dict[str, int]]:
    """(state, figures) of a part, without its detail (its list of claims)."""
    row = await conn.fetchrow(
        """SELECT state, figures::text AS figures FROM journeys.cohort_batches
           WHERE cohort_id = $1 AND seq = $2 AND part = $3""",
        cohort_id,
        seq,
        part,
    )
    assert row is not None
    return row["state"], json.loads(row["figures"])


async def set_batch_figures(
    conn: Connection,
    cohort_id: int,
    seq: int,
    part: int,
    state: str,
    figures: Mapping[str, int],
    now: dt.datetime,
) -> None:
    await conn.execute(
        """UPDATE journeys.cohort_batches SET state = $4, figures = $5::jsonb, update_time = $6
           WHERE cohort_id = $1 AND seq = $2 AND part = $3""",
        cohort_id,
        seq,
        part,
        state,
        json.dumps(dict(figures), sort_keys=True),
        now,
    )


async def add_batch_figures(
    conn: Connection,
    cohort_id: int,
    seq: int,
    part: int,
    figures: Mapping[str, int],
    now: dt.datetime,
    *,
    done: bool = False,
) -> None:
    """Adds to a part's figures (and marks it done), in one statement."""
    await conn.execute(
        """UPDATE journeys.cohort_batches AS b
           SET figures = (SELECT coalesce(jsonb_object_agg(key, total), '{}')
                          FROM (SELECT key, sum(value::bigint) AS total
                                FROM (SELECT * FROM jsonb_each_text(b.figures)
                                      UNION ALL SELECT * FROM jsonb_each_text($4::jsonb)) AS f
                                GROUP BY key) AS t),
               state = CASE WHEN $5 THEN 'done' ELSE b.state END,
               update_time = $6
           WHERE cohort_id = $1 AND seq = $2 AND part = $3""",
        cohort_id,
        seq,
        part,
        json.dumps(dict(figures)),
        done,
        now,
    )


async def refresh_statistics(conn: Connection, *tables: str) -> None:
    """ANALYZE of tables a broadcast is filling (its plans are only as good as their statistics)."""
    for table in tables:
        assert table in ("cohort_members", "messages")
        await conn.execute(f"ANALYZE journeys.{table}")


def statistics_due(ordinal: int) -> bool:
    """Whether the `ordinal`-th call of a kind refreshes statistics: the 1st, 2nd, 4th, 8th, ...,
    so they follow a cohort as it doubles, at a cost that stays small."""
    return ordinal > 0 and ordinal & (ordinal - 1) == 0


async def total_figures(conn: Connection, cohort_id: int) -> dict[str, int]:
    """The sum of every batch's figures: what the cohort did, from the database's side."""
    rows = await conn.fetch(
        """SELECT f.key, sum(f.value::bigint) AS total
           FROM journeys.cohort_batches b, jsonb_each_text(b.figures) AS f
           WHERE b.cohort_id = $1 GROUP BY f.key""",
        cohort_id,
    )
    return {row["key"]: int(row["total"]) for row in rows}


async def claimed_batches(conn: Connection, cohort_id: int) -> list[tuple[int, int, Any]]:
    """(seq, part, detail) of the parts whose sends are not all settled."""
    rows = await conn.fetch(
        """SELECT seq, part, detail::text AS detail FROM journeys.cohort_batches
           WHERE cohort_id = $1 AND state = 'claimed' ORDER BY seq, part""",
        cohort_id,
    )
    return [(row["seq"], row["part"], json.loads(row["detail"])) for row in rows]


# --- members -----------------------------------------------------------------------------------


async def other_cohorts(conn: Connection, journey_key: str, cohort_id: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT cohort_id FROM journeys.cohorts WHERE journey_key = $1 AND cohort_id <> $2",
        journey_key,
        cohort_id,
    )
    return [row["cohort_id"] for row in rows]


async def enrol_members(
    conn: Connection,
    tenant_id: str,
    cohort: Cohort,
    others: Sequence[int],
    member_ids: Sequence[str],
    arms: Sequence[str],
    holdout_salt: str,
    holdout_buckets: int,
    reentry: str,
    cooldown: dt.timedelta,
    now: dt.datetime,
) -> list[asyncpg.Record]:
    """Enrols the page's members at their first step, due now, with the journey's holdout bucket,
    except those the re-entry policy keeps out: members enrolled in this journey (one member at a
    time, or in another of its cohorts) who are still in it, or, under `never`, ever were, or
    under `after_exit`, left it less than `cooldown` ago. Returns (holdout, snapshot_arm, count)."""
    kept_out = "($11 OR x.state = 'active' OR x.finish_time > $10)"
    return await conn.fetch(
        f"""WITH entered AS (
                INSERT INTO journeys.cohort_members AS c (tenant_id, cohort_id, member_id, holdout,
                                                          snapshot_arm, due_time, enter_time)
                SELECT $1, $2, s.member_id, {bucket_sql("$3::text", "s.member_id")} < $4, s.arm, $5, $5
                FROM unnest($6::text[], $7::text[]) AS s(member_id, arm)
                WHERE NOT EXISTS (SELECT 1 FROM journeys.enrolments x
                                  WHERE x.tenant_id = $1 AND x.journey_key = $8 AND x.member_id = s.member_id
                                    AND {kept_out})
                  AND NOT EXISTS (SELECT 1 FROM journeys.cohort_members x
                                  WHERE x.tenant_id = $1 AND x.cohort_id = ANY($9::bigint[])
                                    AND x.member_id = s.member_id AND {kept_out})
                ON CONFLICT DO NOTHING
                RETURNING c.holdout, c.snapshot_arm)
            SELECT holdout, snapshot_arm, count(*) AS n FROM entered GROUP BY 1, 2""",
        tenant_id,
        cohort.cohort_id,
        holdout_salt,
        holdout_buckets,
        now,
        list(member_ids),
        list(arms),
        cohort.journey_key,
        list(others),
        now - cooldown,
        reentry == "never",
    )


@dataclass(frozen=True)
class Due:
    member_id: str
    position: int
    holdout: bool
    due_time: dt.datetime
    # False: the member gets to the step now (the funnel has not counted it there yet).
    arrived: bool = True


async def due_members(conn: Connection, cohort_id: int, now: dt.datetime, limit: int) -> list[Due]:
    rows = await conn.fetch(
        """SELECT member_id, position, holdout, due_time, arrived FROM journeys.cohort_members
           WHERE cohort_id = $1 AND state = 'active' AND due_time <= $2
           ORDER BY due_time LIMIT $3""",
        cohort_id,
        now,
        limit,
    )
    return [Due(r["member_id"], r["position"], r["holdout"], r["due_time"], r["arrived"]) for r in rows]


async def members_at(
    conn: Connection, cohort_id: int, member_ids: Sequence[str]
) -> dict[str, tuple[int, str]]:
    """member -> (position, state) of the members named."""
    rows = await conn.fetch(
        """SELECT c.member_id, c.position, c.state FROM journeys.cohort_members c
           WHERE c.cohort_id = $1""",
        cohort_id,
        list(member_ids),
    )
    return {r["member_id"]: (r["position"], r["state"]) for r in rows}


# Distinct (position, due time) pairs of one move beyond which it goes as one joined statement.
_MOVE_GROUPS = 16


async def move(
    conn: Connection,
    cohort_id: int,
    member_ids: Sequence[str],
    positions: Sequence[int],
    due_times: Sequence[dt.datetime],
    arrived: Sequence[bool],
    split_arms: Sequence[str] | None = None,
) -> None:
    """Puts active members at a step (the number of steps: past the last) due from a time, adding
    the split arm each took (`{step id}:{arm}`, '' for none) to its `split_arms` once. Members
    going to the same step at the same time (most of a batch) go as one array of ids."""
    arms = list(split_arms) if split_arms is not None else [""] * len(member_ids)
    groups: dict[tuple[int, dt.datetime, bool, str], list[str]] = {}
    for member, position, due, here, arm in zip(member_ids, positions, due_times, arrived, arms, strict=True):
        groups.setdefault((position, due, here, arm), []).append(member)
    if len(groups) > _MOVE_GROUPS:
        await conn.execute(
            """UPDATE journeys.cohort_members AS c
               SET position = m.position, due_time = m.due_time, arrived = m.arrived,
                   split_arms = CASE WHEN m.arm = '' OR m.arm = ANY(c.split_arms) THEN c.split_arms
                                     ELSE c.split_arms || m.arm END
               FROM unnest($2::text[], $3::smallint[], $4::timestamptz[], $5::bool[], $6::text[])
                    AS m(member_id, position, due_time, arrived, arm)
               WHERE c.cohort_id = $1 AND c.member_id = m.member_id AND c.state = 'active'
                 -- The members once more as an array, so the rows are found through the primary key
                 -- (see message_log.record_many).
                 AND c.member_id = ANY($2::text[])""",
            cohort_id,
            list(member_ids),
            list(positions),
            list(due_times),
            list(arrived),
            arms,
        )
        return
    for (position, due, here, arm), members in groups.items():
        await conn.execute(
            """UPDATE journeys.cohort_members
               SET position = $2, due_time = $3, arrived = $4,
                   split_arms = CASE WHEN $6 = '' OR $6 = ANY(split_arms) THEN split_arms
                                     ELSE split_arms || $6::text END
               WHERE cohort_id = $1 AND member_id = ANY($5::text[]) AND state = 'active'""",
            cohort_id,
            position,
            due,
            here,
            members,
            arm,
        )


async def next_due(conn: Connection, cohort_id: int) -> dt.datetime | None:
    """When the earliest active member may take its next step; None when every one has walked."""
    due: dt.datetime | None = await conn.fetchval(
        """SELECT nullif(due_time, 'infinity') FROM journeys.cohort_members
           WHERE cohort_id = $1 AND state = 'active' ORDER BY due_time LIMIT 1""",
        cohort_id,
    )
    return due


async def convert(
    conn: Connection,
    cohort_id: int,
    goals: Sequence[tuple[str, int, dt.datetime]],
    attribution: dt.timedelta,
    now: dt.datetime,
) -> list[asyncpg.Record]:
    """Members reaching the goal leave as converted, with the amount as GMV: of each member's goal
    events (member, amount, when its fact happened), the earliest that happened inside
    [enter_time, enter_time + attribution] counts; returns (holdout, count, gmv) of those
    converted now."""
    return await conn.fetch(
        """WITH goal AS (
               SELECT DISTINCT ON (u.member_id) u.member_id, u.amount, u.occur_time
               FROM unnest($2::text[], $3::bigint[], $4::timestamptz[]) AS u(member_id, amount, occur_time)
               JOIN journeys.cohort_members c
                 ON c.cohort_id = $1 AND c.member_id = u.member_id AND c.state = 'active'
               WHERE u.occur_time BETWEEN c.enter_time AND c.enter_time + $5::interval
               ORDER BY u.member_id, u.occur_time),
           converted AS (
               UPDATE journeys.cohort_members AS c
               SET state = 'converted', convert_time = g.occur_time, finish_time = $6, gmv_minor = g.amount
               FROM goal g
               WHERE c.cohort_id = $1 AND c.member_id = g.member_id AND c.state = 'active'
               RETURNING c.holdout, c.gmv_minor)
           SELECT holdout, count(*) AS n, sum(gmv_minor) AS gmv FROM converted GROUP BY holdout""",
        cohort_id,
        [member_id for member_id, _, _ in goals],
        [amount for _, amount, _ in goals],
        [occur_time for _, _, occur_time in goals],
        attribution,
        now,
    )


async def exit_members(
    conn: Connection, cohort_id: int, exits: Sequence[tuple[str, dt.datetime]], now: dt.datetime
) -> int:
    """Active members with an exit criterion (member, when its fact happened) that happened since
    they entered leave as exited (history exits nobody); returns how many."""
    result = await conn.fetchval(
        """WITH exited AS (
               UPDATE journeys.cohort_members AS c SET state = 'exited', finish_time = $4
               WHERE c.cohort_id = $1 AND c.member_id = ANY($2::text[]) AND c.state = 'active'
                 AND EXISTS (SELECT 1 FROM unnest($2::text[], $3::timestamptz[]) AS u(member_id, occur_time)
                             WHERE u.member_id = c.member_id AND u.occur_time >= c.enter_time)
               RETURNING 1)
           SELECT count(*) FROM exited""",
        cohort_id,
        [member_id for member_id, _ in exits],
        [occur_time for _, occur_time in exits],
        now,
    )
    return int(result)


async def finish(conn: Connection, cohort_id: int, state: str, now: dt.datetime) -> int:
    """Ends the members still active (completed or stopped) and the cohort; returns how many."""
    ended = await conn.fetchval(
        """WITH ended AS (
               UPDATE journeys.cohort_members SET state = $2, finish_time = $3
               WHERE cohort_id = $1 AND state = 'active' RETURNING 1)
           SELECT count(*) FROM ended""",
        cohort_id,
        state,
        now,
    )
    await conn.execute(
        "UPDATE journeys.cohorts SET state = $2, finish_time = $3 WHERE cohort_id = $1 AND state = 'active'",
        cohort_id,
        state,
        now,
    )
    return int(ended)
