"""The audience schema's part of erasing a member (SQL only): the member's rows move to the
pseudonym. Snapshot members keep their arm, so a broadcast's counts and report stay whole; dynamic
membership and its feed move too, since tagging keeps the member's facts under the pseudonym and the
next evaluation would enter it anyway. Feed rows are rewritten where they are, never appended: a
new entry would enter the pseudonym into the journeys that follow the feed."""

from __future__ import annotations

from runtime.db import Connection
from runtime.erasure import Erasure, moved, run

STATEMENTS = (
    *moved("audience.snapshot_members", key=("snapshot_id",)),
    *moved("audience.dynamic_members", key=("audience_id",)),
    *moved("audience.feed"),
)


async def erase(conn: Connection, erasure: Erasure) -> dict[str, int]:
    """The rows changed, by table."""
    return await run(conn, "audience", erasure, STATEMENTS)
