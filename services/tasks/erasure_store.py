"""The tasks schema's part of erasing a member (SQL only): every row of the member moves to the
pseudonym, so balances, lots, progress, levels and task budgets stay as they were.

Request ids are the callers' and may embed the member's id, so the member's id inside them is
replaced by the pseudonym (a retry after an erasure is a new request: the member is gone). An
operator's note on a correction is free text about the member and is cleared. Order ids and
references stay: they are the shop's, and refunds of orders still find the points they earned.
The accounts row is the ledger entries' parent: the pseudonym's is written first, the member's
removed last.
"""

from __future__ import annotations

from runtime.db import Connection
from runtime.erasure import ERASED_TEXT, Erasure, Statement, moved, run

# memberops.tasks.v1.Reason OPERATOR: an entry whose note an operator wrote.
_OPERATOR = 3
_REQUEST_ID = ", request_id = replace(request_id, $1, $2)"

STATEMENTS = (
    Statement(
        "accounts",
        """INSERT INTO tasks.accounts (tenant_id, member_id, create_time)
           SELECT tenant_id, $2, create_time FROM tasks.accounts WHERE member_id = $1
           ON CONFLICT (tenant_id, member_id) DO NOTHING""",
        counted=False,
    ),
    *moved(
        "tasks.ledger_entries",
        also=f"""{_REQUEST_ID},
            note = CASE WHEN reason = {_OPERATOR} AND note <> '' THEN '{ERASED_TEXT}' ELSE note END""",
    ),
    Statement("accounts", "DELETE FROM tasks.accounts WHERE member_id = $1"),
    *moved("tasks.lots"),
    *moved("tasks.completions", also=", claim_request_id = replace(claim_request_id, $1, $2)"),
    *moved("tasks.enrolments", key=("task_id",)),
    *moved("tasks.progress", key=("task_id", "cycle_start")),
    *moved("tasks.purchase_orders"),
    *moved("tasks.redemptions", also=_REQUEST_ID),
    *moved("tasks.coupon_holdings", key=("template_id",)),
    *moved("tasks.coupons", also=_REQUEST_ID),
    *moved("tasks.reward_member_redemptions", key=("reward_id",)),
    *moved("tasks.shares", key=("task_id", "target"), also=_REQUEST_ID),
    *moved("tasks.sign_ins", key=("task_id", "day"), also=_REQUEST_ID),
    Statement(
        "invites",
        """UPDATE tasks.invites
           SET invitee_member_id = CASE WHEN invitee_member_id = $1 THEN $2 ELSE invitee_member_id END,
               inviter_member_id = CASE WHEN inviter_member_id = $1 THEN $2 ELSE inviter_member_id END,
               request_id = replace(request_id, $1, $2)
           WHERE invitee_member_id = $1 OR inviter_member_id = $1""",
    ),
    *moved("tasks.member_facts", key=()),
    *moved("tasks.member_levels", key=()),
    *moved("tasks.feed"),
    *moved("tasks.level_benefit_grants", key=("benefit", "period")),
    *moved("tasks.coupon_violations"),
    *moved("tasks.member_badges", key=("badge_id",)),
)


async def erase(conn: Connection, erasure: Erasure) -> dict[str, int]:
    """Locks what names the member in the service's lock order (services/tasks/README.md): their
    facts row, the invites naming them, then their account as every ledger write does (so an
    earning waiting on it sees the erasure whole); then moves the rows; the rows changed by table.
    Taking the account first and the facts row last, as it did, closed a cycle with the feed
    follower, which holds an invitee's facts row while it locks their invites (a deadlock)."""
    member = erasure.member_id
    await conn.execute("SELECT 1 FROM tasks.member_facts WHERE member_id = $1 FOR UPDATE", member)
    await conn.execute(
        """SELECT 1 FROM tasks.invites WHERE invitee_member_id = $1 OR inviter_member_id = $1
           ORDER BY invitee_member_id, task_id FOR UPDATE""",
        member,
    )
    await conn.execute("SELECT 1 FROM tasks.accounts WHERE member_id = $1 FOR UPDATE", member)
    return await run(conn, "tasks", erasure, STATEMENTS)
