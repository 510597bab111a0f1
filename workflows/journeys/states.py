"""Journey states in the worker's schema `journeys` (migration 0005; SQL only, no Temporal).

A journey is a draft until an operator activates one of its versions: draft -> active (a version
goes live) -> paused -> active ... and finally archived. Only an active journey enrols (see
`store.enrol` and the cohort's `open`, which read the state row FOR SHARE in their own transaction,
so a pause either sees their enrolment or they see the pause). A journey without a row is a draft,
so journeys stored before states existed (and the shipped ones) stay drafts until activated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from runtime.db import Connection, Database
from runtime.errors import Aborted, FailedPrecondition, NotFound
from workflows.journeys import store
from workflows.journeys.store import StoredDefinition

STATES = ("draft", "active", "paused", "archived")

# to_state -> the states it may be reached from (a repeat of a transition that holds is a no-op).
_FROM = {
    "active": ("draft", "active", "paused"),
    "paused": ("active",),
    "archived": ("draft", "active", "paused"),
}


class Request(Protocol):
    """A move's request id, recorded in the move's own transaction (the journeys service's
    `request_store.Move`): a retry finds the first call's answer instead of moving again."""

    async def first(self, conn: Connection) -> int | None:
        """The live version the first call with this id left, or None (locks the id)."""

    async def record(self, conn: Connection, live_version: int) -> None:
        """Records this call's answer."""


@dataclass(frozen=True)
class JourneyState:
    journey_key: str
    state: str
    # The version that runs; 0 while the journey was never activated.
    live_version: int
    # Grows with every change of state or live version; 0 for a draft without a row.
    revision: int
    update_time: dt.datetime | None


def draft(journey_key: str) -> JourneyState:
    return JourneyState(journey_key, "draft", 0, 0, None)


_SELECT = """SELECT journey_key, state, live_version, revision, update_time
             FROM journeys.journey_states WHERE tenant_id = $1"""


async def read_state(conn: Connection, tenant_id: str, key: str, lock: str = "") -> JourneyState:
    """The journey's state inside the caller's transaction; `lock` "SHARE" or "UPDATE" takes the
    row lock (no lock is taken for a draft without a row)."""
    suffix = f" FOR {lock}" if lock else ""
    row = await conn.fetchrow(f"{_SELECT} AND journey_key = $2{suffix}", tenant_id, key)
    return draft(key) if row is None else JourneyState(**dict(row))


async def _versions(conn: Connection, tenant_id: str, key: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT version FROM journeys.definitions WHERE tenant_id = $1 AND journey_key = $2 ORDER BY version",
        tenant_id,
        key,
    )
    return [row["version"] for row in rows]


async def _exists(conn: Connection, tenant_id: str, key: str) -> None:
    found = await conn.fetchval(
        "SELECT true FROM journeys.definitions WHERE tenant_id = $1 AND journey_key = $2 LIMIT 1",
        tenant_id,
        key,
    )
    if not found:
        raise NotFound(f"journey {key!r} does not exist")


async def get_state(db: Database, tenant_id: str, key: str) -> JourneyState:
    """The journey's state (a draft when it has no row); NotFound when it has no definition."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        await _exists(conn, tenant_id, key)
        return await read_state(conn, tenant_id, key)


async def get_states(db: Database, tenant_id: str, keys: Sequence[str]) -> dict[str, JourneyState]:
    """The state of each of `keys` (a draft when it has no row), whether or not it has a definition."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(f"{_SELECT} AND journey_key = ANY($2::text[])", tenant_id, list(keys))
    found = {row["journey_key"]: JourneyState(**dict(row)) for row in rows}
    return {key: found.get(key) or draft(key) for key in keys}


async def transition(
    db: Database,
    tenant_id: str,
    key: str,
    to_state: str,
    version: int,
    now: dt.datetime,
    *,
    resume: bool = False,
    checked: int = 0,
    request: Request | None = None,
) -> JourneyState:
    """Moves the journey to `to_state` under its row lock. `version` matters for activation only: a
    stored version (0: the latest; resuming a paused journey with 0 keeps its live version).
    Decided under the lock, from the state as it is then: `resume` moves a paused journey to active
    with its live version (an active one stays as it is; anything else is FailedPrecondition), and
    `checked` is the version an activation with version 0 resolved to and checked beforehand
    (Aborted if 0 now means another one, stored or made live meanwhile). Repeating a transition
    that already holds returns the state unchanged (same revision); repeating a `request` returns
    the current state with the live version the first call left, and moves nothing."""
    if to_state not in _FROM or (resume and to_state != "active"):
        raise FailedPrecondition(f"a journey cannot be moved to {to_state!r}")
    async with db.transaction(tenant_id) as conn:
        # A draft has no row to lock: the advisory lock serialises its first transitions.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            "\x1f".join(("journey-state", tenant_id, key)),
        )
        versions = await _versions(conn, tenant_id, key)
        if not versions:
            raise NotFound(f"journey {key!r} does not exist")
        current = await read_state(conn, tenant_id, key, lock="UPDATE")
        first = None if request is None else await request.first(conn)
        if first is not None:
            return replace(current, live_version=first)
        if current.state not in _FROM[to_state] and current.state != to_state:
            raise FailedPrecondition(_why(current, to_state))
        if resume and current.state not in ("paused", "active"):
            raise FailedPrecondition(
                f"journey {key!r} is {current.state}: only a paused journey can be resumed"
            )
        live = current.live_version if resume else _live_version(current, to_state, version, versions)
        if checked and not version and live != checked:
            raise Aborted(
                f"journeys/{key} changed meanwhile: version 0 now makes version {live} live, not the "
                f"version {checked} that was checked; repeat the call"
            )
        if request is not None:
            await request.record(conn, live)
        if current.state == to_state and current.live_version == live:
            return current
        row = await conn.fetchrow(
            """INSERT INTO journeys.journey_states (tenant_id, journey_key, state, live_version, revision,
                                                    update_time)
               VALUES ($1, $2, $3, $4, 1, $5)
               ON CONFLICT (tenant_id, journey_key) DO UPDATE
               SET state = EXCLUDED.state, live_version = EXCLUDED.live_version,
                   revision = journey_states.revision + 1, update_time = EXCLUDED.update_time
               RETURNING journey_key, state, live_version, revision, update_time""",
            tenant_id,
            key,
            to_state,
            live,
            now,
        )
    assert row is not None
    return JourneyState(**dict(row))


def _live_version(current: JourneyState, to_state: str, version: int, versions: list[int]) -> int:
    """The live version after the move: activation names one (0: the latest, or for a paused
    journey its live one); pausing and archiving keep the live version."""
    if to_state != "active":
        if version:
            raise FailedPrecondition(f"only activation takes a version, not moving to {to_state}")
        return current.live_version
    if version == 0:
        return current.live_version if current.state == "paused" else versions[-1]
    if version not in versions:
        raise NotFound(f"journey {current.journey_key!r} version {version} does not exist")
    if current.state == "paused" and version != current.live_version:
        raise FailedPrecondition(
            f"journey {current.journey_key!r} is paused with version {current.live_version} live: "
            "resume it before another version goes live"
        )
    return version


def _why(current: JourneyState, to_state: str) -> str:
    key = current.journey_key
    if current.state == "archived":
        return f"journey {key!r} is archived: an archived journey stays archived"
    if to_state == "paused":
        return f"journey {key!r} is {current.state}: only an active journey can be paused"
    return f"journey {key!r} cannot move from {current.state} to {to_state}"


async def live_definitions(
    db: Database, tenant_id: str, keys: Sequence[str] = (), states: Sequence[str] = ("active",)
) -> list[tuple[StoredDefinition, JourneyState]]:
    """The live version of each journey (of `keys`, or all) in one of `states`, by key. A draft has
    no live version, so asking for drafts finds nothing."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT s.journey_key, s.state, s.live_version, s.revision, s.update_time,
                      d.version, d.content::text AS content, d.format_version
               FROM journeys.journey_states s
               JOIN journeys.definitions d
                 ON d.tenant_id = s.tenant_id AND d.journey_key = s.journey_key AND d.version = s.live_version
               WHERE s.tenant_id = $1 AND s.state = ANY($2::text[])
                 AND (cardinality($3::text[]) = 0 OR s.journey_key = ANY($3::text[]))
               ORDER BY s.journey_key""",
            tenant_id,
            list(states),
            list(keys),
        )
    return [
        (
            store.stored(row),
            JourneyState(
                row["journey_key"], row["state"], row["live_version"], row["revision"], row["update_time"]
            ),
        )
        for row in rows
    ]


async def live_definition(db: Database, tenant_id: str, key: str) -> StoredDefinition:
    """What a run started without a version runs: the live version (the latest one for a draft,
    which enrols nobody anyway); NotFound when the journey has no definition. One statement: it is
    on every member's entry."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        row = await conn.fetchrow(
            """SELECT d.version, d.content::text AS content, d.format_version
               FROM journeys.definitions d
               LEFT JOIN journeys.journey_states s
                 ON s.tenant_id = d.tenant_id AND s.journey_key = d.journey_key
               WHERE d.tenant_id = $1 AND d.journey_key = $2
                 AND (coalesce(s.live_version, 0) = 0 OR d.version = s.live_version)
               ORDER BY d.version DESC LIMIT 1""",
            tenant_id,
            key,
        )
    if row is None:
        raise NotFound(f"journey {key!r} does not exist")
    return store.stored(row)
