"""Where the tenant's WeCom sync stands (journeys.wecom_sync, migration 0010), SQL only: the
tagging feed cursor and the batch in progress, counters, the last error, the full reconciliation.
Functions take a connection inside the caller's tenant transaction; the row is the transaction's
tenant's (made by the first connector put, or here when a counter comes first)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from runtime.db import Connection

# The row of the transaction's tenant, made when missing.
_ENSURE = """INSERT INTO journeys.wecom_sync (tenant_id)
             VALUES (current_setting('memberops.tenant_id')) ON CONFLICT DO NOTHING"""


@dataclass(frozen=True)
class SyncState:
    cursor: str = ""
    started: bool = False
    pending_end: str = ""
    pending_done: int = 0
    members_marked: int = 0
    members_skipped: int = 0
    tags_pulled: int = 0
    callbacks_received: int = 0
    callbacks_refused: int = 0
    last_push_time: dt.datetime | None = None
    last_error: str = ""
    resync_request_id: str = ""
    resync_state: str = ""
    resync_cursor: str = ""
    resync_page_end: str = ""
    resync_page_done: int = 0
    resync_checked: int = 0
    resync_repaired: int = 0
    resync_start: dt.datetime | None = None
    resync_end: dt.datetime | None = None
    resync_wanted: bool = False


_FIELDS = tuple(SyncState.__dataclass_fields__)


def _state(row: asyncpg.Record) -> SyncState:
    return SyncState(**{name: row[name] for name in _FIELDS})


async def get(conn: Connection, *, for_update: bool = False) -> SyncState | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {', '.join(_FIELDS)} FROM journeys.wecom_sync{lock}")
    return None if row is None else _state(row)


async def count(
    conn: Connection, *, tags_pulled: int = 0, callbacks_received: int = 0, callbacks_refused: int = 0
) -> None:
    """Adds to the callbacks' counters (the pull and the callback endpoint)."""
    await conn.execute(_ENSURE)
    await conn.execute(
        """UPDATE journeys.wecom_sync SET tags_pulled = tags_pulled + $1,
               callbacks_received = callbacks_received + $2, callbacks_refused = callbacks_refused + $3""",
        tags_pulled,
        callbacks_received,
        callbacks_refused,
    )


async def want_resync(conn: Connection) -> None:
    """Asks for a full reconciliation (the pull met a `shuffle` or a change it cannot follow): the
    sync's next round starts one unless one is running."""
    await conn.execute(_ENSURE)
    await conn.execute("UPDATE journeys.wecom_sync SET resync_wanted = true")


async def note_error(conn: Connection, error: str) -> None:
    """The latest WeCom error the sync met ('' once a call succeeded again)."""
    await conn.execute("UPDATE journeys.wecom_sync SET last_error = $1 WHERE last_error <> $1", error)


# --- the push's batch -------------------------------------------------------------------------


async def start_cursor(conn: Connection, cursor: str) -> bool:
    """Sets where the push starts reading, once (True when this call did)."""
    status = await conn.execute(
        "UPDATE journeys.wecom_sync SET cursor = $1, started = true WHERE NOT started", cursor
    )
    return bool(status == "UPDATE 1")


async def begin_batch(conn: Connection, cursor: str, end: str) -> bool:
    """Records the batch after `cursor` ending at feed entry `end` as in progress (none done);
    False when the stored cursor moved meanwhile (another attempt's)."""
    status = await conn.execute(
        """UPDATE journeys.wecom_sync SET pending_end = $2, pending_done = 0
           WHERE cursor = $1 AND pending_end = ''""",
        cursor,
        end,
    )
    return bool(status == "UPDATE 1")


async def member_done(conn: Connection, end: str, done: int, *, marked: int, skipped: int) -> None:
    """The batch's first `done` members are in WeCom (`marked`: a mark_tag was made for this one)."""
    await conn.execute(
        """UPDATE journeys.wecom_sync SET pending_done = $2, members_marked = members_marked + $3,
               members_skipped = members_skipped + $4, last_error = ''
           WHERE pending_end = $1 AND pending_done < $2""",
        end,
        done,
        marked,
        skipped,
    )


async def drop_progress(conn: Connection) -> None:
    """Forgets the batch and reconciliation page in progress (the feed no longer answers them as
    it did): they start again from their cursors, members done repeated (state-based: harmless)."""
    await conn.execute(
        """UPDATE journeys.wecom_sync SET pending_end = '', pending_done = 0, resync_page_end = '',
               resync_page_done = 0"""
    )


async def finish_batch(conn: Connection, cursor: str, end: str, now: dt.datetime) -> bool:
    """Moves the cursor past the batch (`end`; an empty batch: from `cursor` to `end` directly)."""
    status = await conn.execute(
        """UPDATE journeys.wecom_sync SET cursor = $2, pending_end = '', pending_done = 0,
               last_push_time = $3, update_time = $3
           WHERE cursor = $1 AND pending_end IN ('', $2)""",
        cursor,
        end,
        now,
    )
    return bool(status == "UPDATE 1")


# --- the full reconciliation ------------------------------------------------------------------


async def start_resync(conn: Connection, request_id: str, now: dt.datetime) -> SyncState:
    """Starts a full reconciliation for `request_id` unless it is the latest one (a retry); the
    sync's state after."""
    await conn.execute(_ENSURE)
    await conn.execute(
        """UPDATE journeys.wecom_sync SET resync_request_id = $1, resync_state = 'running',
               resync_cursor = '', resync_page_end = '', resync_page_done = 0, resync_checked = 0,
               resync_repaired = 0, resync_start = $2, resync_end = NULL, resync_wanted = false
           WHERE resync_request_id <> $1""",
        request_id,
        now,
    )
    found = await get(conn)
    assert found is not None
    return found


async def begin_page(conn: Connection, request_id: str, cursor: str, end: str) -> bool:
    status = await conn.execute(
        """UPDATE journeys.wecom_sync SET resync_page_end = $3, resync_page_done = 0
           WHERE resync_request_id = $1 AND resync_state = 'running' AND resync_cursor = $2
             AND resync_page_end = ''""",
        request_id,
        cursor,
        end,
    )
    return bool(status == "UPDATE 1")


async def page_member_done(
    conn: Connection, request_id: str, end: str, done: int, *, checked: int, repaired: int
) -> None:
    await conn.execute(
        """UPDATE journeys.wecom_sync SET resync_page_done = $3, resync_checked = resync_checked + $4,
               resync_repaired = resync_repaired + $5,
               members_marked = members_marked + $5, last_error = ''
           WHERE resync_request_id = $1 AND resync_state = 'running' AND resync_page_end = $2
             AND resync_page_done < $3""",
        request_id,
        end,
        done,
        checked,
        repaired,
    )


async def finish_page(conn: Connection, request_id: str, cursor: str, end: str, now: dt.datetime) -> None:
    await conn.execute(
        """UPDATE journeys.wecom_sync SET resync_cursor = $3, resync_page_end = '', resync_page_done = 0,
               update_time = $4
           WHERE resync_request_id = $1 AND resync_state = 'running' AND resync_cursor = $2
             AND resync_page_end IN ('', $3)""",
        request_id,
        cursor,
        end,
        now,
    )


async def finish_resync(conn: Connection, request_id: str, state: str, now: dt.datetime) -> None:
    """Ends the reconciliation as `done` or `failed`."""
    await conn.execute(
        """UPDATE journeys.wecom_sync SET resync_state = $2, resync_end = $3, update_time = $3
           WHERE resync_request_id = $1 AND resync_state = 'running'""",
        request_id,
        state,
        now,
    )
