"""SQL of enrolments in purchase tasks counted from each member's enrolment. Runs inside a tenant
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.db import Connection


@dataclass(frozen=True)
class EnrolmentRow:
    task_id: str
    member_id: str
    enrol_time: dt.datetime
    window_end_time: dt.datetime


async def enrol(
    conn: Connection, tenant_id: str, task_id: str, member_id: str, at: dt.datetime, window_end: dt.datetime
) -> EnrolmentRow:
    """The member's enrolment: a new one at `at`, or the one they already had."""
    await conn.execute(
        """INSERT INTO tasks.enrolments (tenant_id, task_id, member_id, enrol_time, window_end_time)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, task_id, member_id) DO NOTHING""",
        tenant_id,
        task_id,
        member_id,
        at,
        window_end,
    )
    found = await enrolments(conn, member_id, [task_id])
    return found[task_id]


async def enrolments(conn: Connection, member_id: str, task_ids: Sequence[str]) -> dict[str, EnrolmentRow]:
    found = await enrolments_of(conn, [member_id], task_ids)
    return {task_id: row for (task_id, _), row in found.items()}


async def enrolments_of(
    conn: Connection, member_ids: Sequence[str], task_ids: Sequence[str]
) -> dict[tuple[str, str], EnrolmentRow]:
    """The enrolments of these members in these tasks, by (task id, member id)."""
    rows = await conn.fetch(
        """SELECT task_id, member_id, enrol_time, window_end_time FROM tasks.enrolments
           WHERE task_id = ANY($2::text[]) AND member_id = ANY($1::text[])""",
        list(member_ids),
        list(task_ids),
    )
    return {(r["task_id"], r["member_id"]): EnrolmentRow(**dict(r)) for r in rows}
