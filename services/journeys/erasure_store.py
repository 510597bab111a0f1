"""The journeys schema's part of erasing a member (SQL only).

The member's enrolments, dispatches, cohort places and message log rows move to the pseudonym, so
funnels, arms, holdouts and conversions add up as before; workflow ids and message-log run ids
embed the member's id and get the pseudonym there instead. What was still going on for the member stops:
active enrolments and cohort places end as `stopped`, queued or retried sends as `skipped`. The
message log keeps no address, but the subject and body rendered for the member (which may name
them) and the provider's last word (`detail`, which may quote the address): all become `[erased]`
(text never rendered stays NULL). A cohort batch lists the members it claimed in its JSON `detail`;
member ids are natural ids (no quotes or backslashes), so the quoted id is replaced in its text.
WeCom callbacks the pull resolved to the member move too, without the member's WeCom id.
"""

from __future__ import annotations

from runtime.db import Connection
from runtime.erasure import ERASED_TEXT, Erasure, Statement, moved, run
from workflows.journeys import message_log

# Member run ids end `/member/{member id}` (message-log run ids go on `#{entry}`): only that part is
# replaced, so a member id that is also part of a journey key or a tenant leaves those alone.
_IN_RUN_ID = "replace({column}, '/member/' || $1, '/member/' || $2)"
_WORKFLOW_ID = ", workflow_id = " + _IN_RUN_ID.format(column="workflow_id")
# An active enrolment or cohort place ends now, as stopped; the others keep how they ended.
_STOPPED = """, state = CASE WHEN state = 'active' THEN 'stopped' ELSE state END,
               finish_time = CASE WHEN state = 'active' THEN now() ELSE finish_time END"""

STATEMENTS = (
    *moved("journeys.enrolments", key=("journey_key", "entry_number"), also=_WORKFLOW_ID + _STOPPED),
    *moved("journeys.dispatches", also=_WORKFLOW_ID),
    *moved("journeys.cohort_members", key=("cohort_id",), also=_STOPPED),
    *moved(
        "journeys.messages",
        also=f""", journey_run = {_IN_RUN_ID.format(column="journey_run")},
            status = CASE WHEN status IN ('queued', 'retry') THEN 'skipped' ELSE status END,
            detail = CASE WHEN detail <> '' THEN '{ERASED_TEXT}' ELSE detail END,
            subject = CASE WHEN subject IS NOT NULL THEN '{ERASED_TEXT}' END,
            body = CASE WHEN body IS NOT NULL THEN '{ERASED_TEXT}' END""",
    ),
    # WeCom callbacks the pull resolved to the member keep the staff member's id, not the member's
    # WeCom id (workflows/wecom/callback_store.py; unresolved ones go with their retention).
    *moved("journeys.wecom_callbacks", also=", external_userid = '', body = body - 'ExternalUserID'"),
    # What the pull last saw in WeCom for the member is derived data: it goes.
    Statement("wecom_seen_tags", "DELETE FROM journeys.wecom_seen_tags WHERE member_id = $1"),
    Statement(
        "cohort_batches",
        """UPDATE journeys.cohort_batches
           SET detail = replace(detail::text, '"' || $1 || '"', '"' || $2 || '"')::jsonb
           WHERE strpos(detail::text, '"' || $1 || '"') > 0""",
    ),
)


async def erase(conn: Connection, tenant_id: str, erasure: Erasure) -> dict[str, int]:
    """The rows changed, by table. The member's send lock is held first, so no send of the member
    is being claimed while its rows move."""
    await message_log.lock_members(conn, tenant_id, [erasure.member_id])
    return await run(conn, "journeys", erasure, STATEMENTS)


async def member_workflows(conn: Connection, member_id: str) -> list[str]:
    """Ids of the member's runs that may still be going: active enrolments, and the runs the
    dispatcher started (a run not yet enrolled has only its dispatch)."""
    rows = await conn.fetch(
        """SELECT workflow_id FROM journeys.enrolments WHERE member_id = $1 AND state = 'active'
           UNION SELECT workflow_id FROM journeys.dispatches WHERE member_id = $1""",
        member_id,
    )
    return [row["workflow_id"] for row in rows]
