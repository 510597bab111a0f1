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
from runtime.erasure import ERASED_TEXT, Erasure, Statement, run

# memberops.tasks.v1.Reason OPERATOR: an entry whose note an operator wrote.
_OPERATOR = 3


def _moved(table: str, *, request_id: str = "") -> Statement:
    """The member's rows of `table` under the pseudonym; `request_id`: a column of caller ids."""
    also = f", {request_id} = replace({request_id}, $1, $2)" if request_id else ""
    return Statement(table, f"UPDATE tasks.{table} SET member_id = $2{also} WHERE member_id = $1")


STATEMENTS = (
    Statement(
        "accounts",
        """INSERT INTO tasks.accounts (tenant_id, member_id, create_time)
           SELECT tenant_id, $2, create_time FROM tasks.accounts WHERE member_id = $1
           ON CONFLICT (tenant_id, member_id) DO NOTHING""",
        counted=False,
    ),
    Statement(
        "ledger_entries",
        f"""UPDATE tasks.ledger_entries
            SET member_id = $2, request_id = replace(request_id, $1, $2),
                note = CASE WHEN reason = {_OPERATOR} AND note <> '' THEN '{ERASED_TEXT}' ELSE note END
            WHERE member_id = $1""",
    ),
    Statement("accounts", "DELETE FROM tasks.accounts WHERE member_id = $1"),
    _moved("lots"),
    _moved("completions", request_id="claim_request_id"),
    _moved("enrolments"),
    _moved("progress"),
    _moved("purchase_orders"),
    _moved("redemptions", request_id="request_id"),
    _moved("shares", request_id="request_id"),
    _moved("sign_ins", request_id="request_id"),
    Statement(
        "invites",
        """UPDATE tasks.invites
           SET invitee_member_id = CASE WHEN invitee_member_id = $1 THEN $2 ELSE invitee_member_id END,
               inviter_member_id = CASE WHEN inviter_member_id = $1 THEN $2 ELSE inviter_member_id END,
               request_id = replace(request_id, $1, $2)
           WHERE invitee_member_id = $1 OR inviter_member_id = $1""",
    ),
    _moved("member_facts"),
    _moved("member_levels"),
    _moved("feed"),
)


async def erase(conn: Connection, erasure: Erasure) -> dict[str, int]:
    """Locks the member's account as every ledger write does (first, so an earning waiting on it
    sees the erasure whole), then moves the rows; the rows changed by table."""
    await conn.execute("SELECT 1 FROM tasks.accounts WHERE member_id = $1 FOR UPDATE", erasure.member_id)
    return await run(conn, "tasks", erasure, STATEMENTS)
