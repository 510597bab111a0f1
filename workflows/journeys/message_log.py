"""The message log and the channel send windows (SQL only).

A row keyed by (tenant, journey run, member, step) is claimed, in status `sending`, in a committed
transaction *before* the provider is called. Whatever happens afterwards (a retry, a crashed
worker, a timed-out attempt) finds the row: `sent`, `failed` and `unknown` are final, `retry` says
the provider certainly did not take it, and `sending` found by a later attempt means the earlier
one died while the provider had the message in hand, so the outcome is unknown and it is never sent
again. Claims of one member are serialised by a transaction lock, so the daily cap cannot be passed
by two journeys sending at once.

A broadcast claims many rows at once (the `_many` functions, set-based over arrays): `queued` rows
are claimed for channels sent one message at a time, `sending` rows for batch endpoints (which are
idempotent per message id, so such a row found by a retry is sent again under the same id).

A claimed row keeps the subject and body rendered for the member (NULL for a send skipped before
rendering). They are written by the claim's INSERT only (and by a member run's claim taking a
`retry` row again, which renders again), never by an outcome: a final row's text never changes, and
the outcome's UPDATE stays a HOT one (migration 0003).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection

FINAL = ("sent", "failed", "unknown", "skipped")
# What counts against the daily cap: everything that may have reached the member, or will.
COUNTED = ("queued", "sending", "sent", "unknown")
# The same as SQL text, for the statements that count a member's day.
_COUNTED_SQL = ", ".join(f"'{status}'" for status in COUNTED)
WINDOW = dt.timedelta(minutes=1)
# Windows older than this are deleted by the claims that pass by.
WINDOW_KEEP = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Key:
    tenant_id: str
    journey_run: str
    member_id: str
    step_id: str


@dataclass(frozen=True)
class Row:
    status: str
    channel: str
    detail: str


async def lock_member(conn: Connection, key: Key) -> None:
    await lock_members(conn, key.tenant_id, [key.member_id])


async def lock_members(conn: Connection, tenant_id: str, member_ids: Sequence[str]) -> None:
    """Takes the members' send locks in one order (their keys'), so two batches never deadlock;
    a transaction should hold at most about a thousand (PostgreSQL's lock table is finite)."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock(k)
           FROM (SELECT DISTINCT hashtextextended(t, 1) AS k FROM unnest($1::text[]) AS t ORDER BY k) AS s""",
        [f"send\x1f{tenant_id}\x1f{member_id}" for member_id in member_ids],
    )


async def find(conn: Connection, key: Key) -> Row | None:
    row = await conn.fetchrow(
        """SELECT status, channel, detail FROM journeys.messages
           WHERE tenant_id = $1 AND journey_run = $2 AND member_id = $3 AND step_id = $4""",
        key.tenant_id,
        key.journey_run,
        key.member_id,
        key.step_id,
    )
    return None if row is None else Row(row["status"], row["channel"], row["detail"])


async def sent_on(conn: Connection, tenant_id: str, member_id: str, day: dt.date) -> int:
    return (await sent_on_many(conn, tenant_id, [member_id], [day])).get(member_id, 0)


async def sent_on_many(
    conn: Connection, tenant_id: str, member_ids: Sequence[str], days: Sequence[dt.date]
) -> dict[str, int]:
    """Messages counted against each member's daily cap on their local day (members without any
    are left out)."""
    rows = await conn.fetch(
        f"""SELECT b.member_id, count(*) AS n
            FROM unnest($2::text[], $3::date[]) AS b(member_id, day)
            JOIN journeys.messages m
              ON m.tenant_id = $1 AND m.member_id = b.member_id AND m.local_day = b.day
             AND m.status IN ({_COUNTED_SQL})
            WHERE m.member_id = ANY($2::text[])  -- see record_many
            GROUP BY b.member_id""",
        tenant_id,
        list(member_ids),
        list(days),
    )
    return {row["member_id"]: row["n"] for row in rows}


def window_of(now: dt.datetime) -> dt.datetime:
    return now.replace(second=0, microsecond=0)


async def take_window_slot(
    conn: Connection, tenant_id: str, channel: str, now: dt.datetime, limit: int
) -> bool:
    """Counts one send in the channel's current one-minute window, unless it is full."""
    return await take_window_slots(conn, tenant_id, channel, now, limit, 1) == 1


async def take_window_slots(
    conn: Connection, tenant_id: str, channel: str, now: dt.datetime, limit: int, wanted: int
) -> int:
    """Counts up to `wanted` sends in the channel's current one-minute window, as many as it has
    room for; returns how many."""
    start = window_of(now)
    taken = await conn.fetchval(
        """INSERT INTO journeys.channel_windows AS w (tenant_id, channel, window_start, sent)
           VALUES ($1, $2, $3, LEAST($4::int, $5::int))
           ON CONFLICT (tenant_id, channel, window_start)
           DO UPDATE SET sent = LEAST(w.sent + $4::int, $5::int) WHERE w.sent < $5::int
           RETURNING new.sent - coalesce(old.sent, 0)""",
        tenant_id,
        channel,
        start,
        wanted,
        limit,
    )
    await conn.execute(
        "DELETE FROM journeys.channel_windows WHERE tenant_id = $1 AND channel = $2 AND window_start < $3",
        tenant_id,
        channel,
        start - WINDOW_KEEP,
    )
    return int(taken or 0)


async def claim(
    conn: Connection,
    key: Key,
    journey_key: str,
    channel: str,
    day: dt.date,
    now: dt.datetime,
    text: tuple[str, str] | None = None,
) -> None:
    """Writes (or, after a certain non-delivery, re-takes) the row in status `sending`, with the
    (subject, body) about to be sent."""
    subject, body = text if text is not None else (None, None)
    await conn.execute(
        """INSERT INTO journeys.messages AS m (tenant_id, journey_run, member_id, step_id, journey_key,
                                               channel, status, local_day, create_time, update_time,
                                               subject, body)
           VALUES ($1, $2, $3, $4, $5, $6, 'sending', $7, $8, $8, $9, $10)
           ON CONFLICT (tenant_id, journey_run, member_id, step_id) DO UPDATE
           SET status = 'sending', channel = excluded.channel, local_day = excluded.local_day,
               attempts = m.attempts + 1, update_time = excluded.update_time,
               subject = excluded.subject, body = excluded.body
           WHERE m.status = 'retry'""",
        key.tenant_id,
        key.journey_run,
        key.member_id,
        key.step_id,
        journey_key,
        channel,
        day,
        now,
        subject,
        body,
    )


async def record(
    conn: Connection,
    key: Key,
    status: str,
    now: dt.datetime,
    *,
    detail: str = "",
    provider_id: str = "",
    journey_key: str = "",
    day: dt.date | None = None,
) -> None:
    """Sets the row's outcome; creates the row for outcomes decided before any claim (skipped)."""
    await conn.execute(
        """INSERT INTO journeys.messages AS m (tenant_id, journey_run, member_id, step_id, journey_key,
                                               channel, status, detail, provider_id, local_day,
                                               create_time, update_time)
           VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8, $9, $10, $10)
           ON CONFLICT (tenant_id, journey_run, member_id, step_id) DO UPDATE
           SET status = excluded.status, detail = excluded.detail, provider_id = excluded.provider_id,
               update_time = excluded.update_time""",
        key.tenant_id,
        key.journey_run,
        key.member_id,
        key.step_id,
        journey_key,
        status,
        detail[:1000],
        provider_id,
        day or now.date(),
        now,
    )


@dataclass(frozen=True)
class Claims:
    """Rows of one journey run to write at once, one per member (arrays in the same order)."""

    member_ids: list[str]
    step_ids: list[str]
    channels: list[str]
    statuses: list[str]
    days: list[dt.date]
    details: list[str]
    # The rendered (subject, body) of each row; None: all rows unrendered (skipped), NULL text.
    texts: list[tuple[str, str]] | None = None


async def claim_many(
    conn: Connection, tenant_id: str, journey_run: str, journey_key: str, claims: Claims, now: dt.datetime
) -> None:
    """Writes new rows (queued, sending or skipped); a row that exists already is an error, since
    a member meets a step once. Rows alike but for the member go as one array (a batch's rows
    mostly are: one step, a few channels and local days)."""
    texts: Sequence[tuple[str, str] | None] = (
        claims.texts if claims.texts is not None else [None] * len(claims.member_ids)
    )
    # (step, channel, status, day, detail) -> the members' ids, subjects and bodies.
    groups: dict[tuple[str, str, str, dt.date, str], tuple[list[str], list[str | None], list[str | None]]]
    groups = {}
    for member, step, channel, status, day, detail, text in zip(
        claims.member_ids,
        claims.step_ids,
        claims.channels,
        claims.statuses,
        claims.days,
        claims.details,
        texts,
        strict=True,
    ):
        members, subjects, bodies = groups.setdefault((step, channel, status, day, detail), ([], [], []))
        members.append(member)
        subjects.append(None if text is None else text[0])
        bodies.append(None if text is None else text[1])
    for (step, channel, status, day, detail), (members, subjects, bodies) in groups.items():
        await conn.execute(
            """INSERT INTO journeys.messages (tenant_id, journey_run, member_id, step_id, journey_key,
                                              channel, status, detail, local_day, create_time, update_time,
                                              subject, body)
               SELECT $1, $2, c.member_id, $3, $4, $5, $6, $7, $8, $9, $9, c.subject, c.body
               FROM unnest($10::text[], $11::text[], $12::text[]) AS c(member_id, subject, body)""",
            tenant_id,
            journey_run,
            step,
            journey_key,
            channel,
            status,
            detail[:1000],
            day,
            now,
            members,
            subjects,
            bodies,
        )


@dataclass(frozen=True)
class Outcomes:
    """New statuses of rows of one journey run (arrays in the same order); `resent` rows count an
    attempt more."""

    member_ids: list[str]
    step_ids: list[str]
    statuses: list[str]
    details: list[str]
    provider_ids: list[str]
    resent: list[bool]


async def record_many(
    conn: Connection, tenant_id: str, journey_run: str, outcomes: Outcomes, now: dt.datetime
) -> None:
    """Sets the outcomes; rows alike but for the member and the provider's id go as one array."""
    groups: dict[tuple[str, str, str, bool], tuple[list[str], list[str]]] = {}
    for member, step, status, detail, provider_id, resent in zip(
        outcomes.member_ids,
        outcomes.step_ids,
        outcomes.statuses,
        outcomes.details,
        outcomes.provider_ids,
        outcomes.resent,
        strict=True,
    ):
        members, provider_ids = groups.setdefault((step, status, detail, resent), ([], []))
        members.append(member)
        provider_ids.append(provider_id)
    for (step, status, detail, resent), (members, provider_ids) in groups.items():
        await conn.execute(
            """UPDATE journeys.messages AS m
               SET status = $4, detail = $5, provider_id = o.provider_id, attempts = m.attempts + $6,
                   update_time = $7
               FROM unnest($8::text[], $9::text[]) AS o(member_id, provider_id)
               WHERE m.tenant_id = $1 AND m.journey_run = $2 AND m.step_id = $3 AND m.member_id = o.member_id
                 -- The members once more as an array: the rows are found through the primary key,
                 -- where the join alone is planned as a scan of the whole table up to millions of rows.
                 AND m.member_id = ANY($8::text[])""",
            tenant_id,
            journey_run,
            step,
            status,
            detail[:1000],
            int(resent),
            now,
            members,
            provider_ids,
        )


async def rows_of(
    conn: Connection, tenant_id: str, journey_run: str, member_ids: Sequence[str], step_ids: Sequence[str]
) -> dict[tuple[str, str], tuple[str, str, int]]:
    """(member, step) -> (status, channel, attempts) of the rows named."""
    rows = await conn.fetch(
        """SELECT m.member_id, m.step_id, m.status, m.channel, m.attempts
           FROM unnest($3::text[], $4::text[]) AS k(member_id, step_id)
           JOIN journeys.messages m
             ON m.tenant_id = $1 AND m.journey_run = $2 AND m.member_id = k.member_id
            AND m.step_id = k.step_id
           WHERE m.member_id = ANY($3::text[])  -- see record_many""",
        tenant_id,
        journey_run,
        list(member_ids),
        list(step_ids),
    )
    return {(r["member_id"], r["step_id"]): (r["status"], r["channel"], r["attempts"]) for r in rows}


async def texts_of(
    conn: Connection, tenant_id: str, journey_run: str, member_ids: Sequence[str], step_ids: Sequence[str]
) -> dict[tuple[str, str], tuple[str, str]]:
    """(member, step) -> (subject, body) logged for the rows named (rows without text left out)."""
    rows = await conn.fetch(
        """SELECT m.member_id, m.step_id, m.subject, m.body
           FROM unnest($3::text[], $4::text[]) AS k(member_id, step_id)
           JOIN journeys.messages m
             ON m.tenant_id = $1 AND m.journey_run = $2 AND m.member_id = k.member_id
            AND m.step_id = k.step_id
           WHERE m.member_id = ANY($3::text[])  -- see record_many
             AND m.subject IS NOT NULL""",
        tenant_id,
        journey_run,
        list(member_ids),
        list(step_ids),
    )
    return {(r["member_id"], r["step_id"]): (r["subject"], r["body"]) for r in rows}


async def take(conn: Connection, tenant_id: str, journey_run: str, member_id: str, step_id: str) -> bool:
    """Moves a queued row (or one the provider did not take) to `sending`, the moment before the
    provider is called; False when another attempt got there first."""
    taken = await conn.fetchval(
        """UPDATE journeys.messages
           SET status = 'sending', attempts = attempts + (status = 'retry')::int
           WHERE tenant_id = $1 AND journey_run = $2 AND member_id = $3 AND step_id = $4
             AND status IN ('queued', 'retry')
           RETURNING true""",
        tenant_id,
        journey_run,
        member_id,
        step_id,
    )
    return bool(taken)
