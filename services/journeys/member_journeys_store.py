"""SQL of ListMemberJourneys: a member's runs (enrolments of member journeys, places in broadcast
cohorts) and the message log's rows of the member. Runs inside a read-only tenant transaction;
every read starts from the member (enrolments_member, messages_member_day, and the cohorts'
primary key probed once per cohort of the tenant)."""

from __future__ import annotations

import datetime as dt

import asyncpg

from runtime.db import Connection


async def runs(conn: Connection, member_id: str) -> list[asyncpg.Record]:
    """Rows `journey_key, version, holdout, split_arms, state, enter_time, broadcast_id, position,
    last_step` of the member's runs, newest entry first. `position` is a cohort member's next
    step (NULL for member runs); `last_step` a member run's newest message's step (the schema
    keeps no position for member runs: their workflow holds it)."""
    return list(
        await conn.fetch(
            """SELECT e.journey_key, e.version, e.arm = 'holdout' AS holdout, e.split_arms, e.state,
                      e.enter_time, '' AS broadcast_id, NULL::smallint AS position,
                      coalesce((SELECT m.step_id FROM journeys.messages m
                                WHERE m.tenant_id = e.tenant_id AND m.member_id = e.member_id
                                  AND m.journey_run = e.workflow_id || '#' || e.entry_number
                                ORDER BY m.create_time DESC, m.step_id DESC LIMIT 1), '') AS last_step
               FROM journeys.enrolments e WHERE e.member_id = $1
               UNION ALL
               SELECT c.journey_key, c.version, m.holdout, m.split_arms, m.state, m.enter_time,
                      c.workflow_id, m.position, ''
               FROM journeys.cohorts c
               JOIN journeys.cohort_members m
                 ON m.tenant_id = c.tenant_id AND m.cohort_id = c.cohort_id AND m.member_id = $1
               ORDER BY enter_time DESC, journey_key, broadcast_id""",
            member_id,
        )
    )


async def steps(conn: Connection, versions: list[tuple[str, int]]) -> list[asyncpg.Record]:
    """Rows `journey_key, version, content, format_version` of these versions."""
    return list(
        await conn.fetch(
            """SELECT d.journey_key, d.version, d.content::text AS content, d.format_version
               FROM journeys.definitions d
               JOIN unnest($1::text[], $2::int[]) AS v(journey_key, version)
                 ON d.journey_key = v.journey_key AND d.version = v.version""",
            [key for key, _ in versions],
            [version for _, version in versions],
        )
    )


async def messages(
    conn: Connection, member_id: str, after: tuple[dt.datetime, str, str] | None, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` rows `journey_key, step_id, channel, status, subject, body, create_time,
    journey_run` of the member's messages (subject and body NULL when never rendered), newest
    first (then by run and step, descending), after `after` (the previous page's last
    (create_time, journey_run, step_id))."""
    return list(
        await conn.fetch(
            """SELECT journey_key, step_id, channel, status, subject, body, create_time, journey_run
               FROM journeys.messages
               WHERE member_id = $1
                 AND ($2::timestamptz IS NULL OR (create_time, journey_run, step_id) < ($2, $3, $4))
               ORDER BY create_time DESC, journey_run DESC, step_id DESC LIMIT $5""",
            member_id,
            after[0] if after else None,
            after[1] if after else "",
            after[2] if after else "",
            limit,
        )
    )
