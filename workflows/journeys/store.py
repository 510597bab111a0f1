"""Journey definitions and enrolments in the worker's schema `journeys` (SQL only, no Temporal).

Definitions are immutable versions: storing a definition whose content equals the latest version
returns that version, anything else adds the next one, so a running journey's version never changes
under it. An enrolment is one member's entry into a journey; the unique indexes of migration 0001
make "at most one running enrolment per member and journey" and the re-entry policy hold whoever
starts the workflow and however often.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from runtime import metrics, migrations
from runtime.db import Connection, Database
from runtime.errors import NotFound
from workflows.journeys import loading
from workflows.journeys.definition import JourneyDefinition, duration, validate

SCHEMA = "journeys"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


async def migrate(dsn: str) -> list[int]:
    """Applies the schema's migrations on a connection of its own, as the services do at start."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrations.migrate(conn, SCHEMA, migrations.load(MIGRATIONS))
    finally:
        await conn.close()


async def _lock(conn: Connection, *parts: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "\x1f".join(parts))


# --- definitions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredDefinition:
    version: int
    definition: JourneyDefinition


async def put_definition(db: Database, tenant_id: str, definition: JourneyDefinition) -> StoredDefinition:
    """Validates and stores `definition`: the latest version when its content is unchanged, else a new one."""
    validate(definition)
    async with db.transaction(tenant_id) as conn:
        await lock_journey(conn, tenant_id, definition.key)
        return await add_version(
            conn, tenant_id, definition, await latest_version(conn, tenant_id, definition.key)
        )


@dataclass(frozen=True)
class VersionRow:
    version: int
    content_hash: str


def content_of(definition: JourneyDefinition) -> tuple[str, str]:
    """The stored content (current format) and its hash."""
    content = loading.to_json(definition)
    return content, hashlib.sha256(content.encode()).hexdigest()


async def lock_journey(conn: Connection, tenant_id: str, key: str) -> None:
    """Serialises the writes of one journey's versions until the transaction ends. The tenant is
    part of the key: tenants with a journey of the same key never wait for each other."""
    await _lock(conn, "journey-definition", tenant_id, key)


async def latest_version(conn: Connection, tenant_id: str, key: str) -> VersionRow | None:
    row = await conn.fetchrow(
        """SELECT version, content_hash FROM journeys.definitions
           WHERE tenant_id = $1 AND journey_key = $2 ORDER BY version DESC LIMIT 1""",
        tenant_id,
        key,
    )
    return None if row is None else VersionRow(row["version"], row["content_hash"])


async def add_version(
    conn: Connection, tenant_id: str, definition: JourneyDefinition, latest: VersionRow | None
) -> StoredDefinition:
    """Stores a validated definition after `latest` (read under `lock_journey`), unless its content
    equals the latest's. Written in the current format (`loading.FORMAT_VERSION`)."""
    content, content_hash = content_of(definition)
    if latest is not None and latest.content_hash == content_hash:
        return StoredDefinition(latest.version, definition)
    version = 1 if latest is None else latest.version + 1
    await conn.execute(
        """INSERT INTO journeys.definitions (tenant_id, journey_key, version, content, content_hash,
                                             format_version)
           VALUES ($1, $2, $3, $4::jsonb, $5, $6)""",
        tenant_id,
        definition.key,
        version,
        content,
        content_hash,
        loading.FORMAT_VERSION,
    )
    return StoredDefinition(version, definition)


async def get_definition(db: Database, tenant_id: str, key: str, version: int = 0) -> StoredDefinition:
    """One version (0: the latest); NotFound when the journey or version does not exist."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        row = await conn.fetchrow(
            """SELECT version, content::text AS content, format_version FROM journeys.definitions
               WHERE tenant_id = $1 AND journey_key = $2 AND ($3 = 0 OR version = $3)
               ORDER BY version DESC LIMIT 1""",
            tenant_id,
            key,
            version,
        )
    if row is None:
        raise NotFound(f"journey {key!r}" + (f" version {version}" if version else "") + " does not exist")
    return stored(row)


def stored(row: asyncpg.Record | Mapping[str, Any]) -> StoredDefinition:
    """A definitions row (`version`, `content` as text, `format_version`) as the worker runs it:
    upgraded to the current format, never re-validated (see `loading.from_stored`)."""
    return StoredDefinition(row["version"], loading.from_stored(row["content"], row["format_version"]))


async def latest_definitions(
    db: Database, tenant_id: str, keys: Sequence[str] = ()
) -> list[StoredDefinition]:
    """The latest version of every journey of the tenant (or of those `keys`), by key."""
    async with db.transaction(tenant_id, readonly=True) as conn:
        rows = await conn.fetch(
            """SELECT DISTINCT ON (journey_key) version, content::text AS content, format_version
               FROM journeys.definitions
               WHERE tenant_id = $1 AND (cardinality($2::text[]) = 0 OR journey_key = ANY($2::text[]))
               ORDER BY journey_key, version DESC""",
            tenant_id,
            list(keys),
        )
    return [stored(row) for row in rows]


async def seed_definitions(
    db: Database, tenants: frozenset[str], definitions: tuple[JourneyDefinition, ...]
) -> None:
    """Stores each shipped definition for each tenant that has no version of it yet, so an
    operator's own version of a shipped journey survives restarts and upgrades."""
    for tenant_id in sorted(tenants):
        for definition in definitions:
            async with db.transaction(tenant_id, readonly=True) as conn:
                exists = await conn.fetchval(
                    "SELECT true FROM journeys.definitions WHERE tenant_id = $1 AND journey_key = $2 LIMIT 1",
                    tenant_id,
                    definition.key,
                )
            if not exists:
                await put_definition(db, tenant_id, definition)


# --- enrolments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentRow:
    enrolment_id: int
    entry_number: int
    arm: str
    run_id: str


@dataclass(frozen=True)
class Refusal:
    reason: str


async def enrol(
    db: Database,
    tenant_id: str,
    definition: JourneyDefinition,
    version: int,
    member_id: str,
    workflow_id: str,
    run_id: str,
    arm: str,
    now: dt.datetime,
    entry_event_id: str = "",
) -> EnrolmentRow | Refusal:
    """Enrols the member for this workflow run, or says why the re-entry policy refuses it.
    Repeating the call for the same run returns the same row; an entry event (a feed entry, see
    the dispatcher) enrols a member into a journey once, even where the journey allows re-entry.
    Only an active journey enrols, into its live version (`entry_refusal`)."""
    async with db.transaction(tenant_id) as conn:
        await _lock(conn, "journey-enrolment", tenant_id, definition.key, member_id)
        mine = await conn.fetchrow(
            """SELECT enrolment_id, entry_number, arm, run_id FROM journeys.enrolments
               WHERE tenant_id = $1 AND run_id = $2""",
            tenant_id,
            run_id,
        )
        if mine is not None:
            return EnrolmentRow(**dict(mine))
        refused = await entry_refusal(conn, tenant_id, definition.key, version)
        if refused is not None:
            return refused
        last = await conn.fetchrow(
            """SELECT entry_number, state, finish_time FROM journeys.enrolments
               WHERE tenant_id = $1 AND journey_key = $2 AND member_id = $3
               ORDER BY entry_number DESC LIMIT 1""",
            tenant_id,
            definition.key,
            member_id,
        )
        reason = refusal(definition, last, now)
        if reason is None and entry_event_id:
            seen = await conn.fetchval(
                """SELECT true FROM journeys.enrolments
                   WHERE tenant_id = $1 AND journey_key = $2 AND entry_event_id = $3""",
                tenant_id,
                definition.key,
                entry_event_id,
            )
            reason = Refusal("entered this journey on this event already") if seen else None
        if reason is not None:
            return reason
        entry_number = 1 if last is None else last["entry_number"] + 1
        row = await conn.fetchrow(
            """INSERT INTO journeys.enrolments (tenant_id, journey_key, version, member_id, entry_number,
                                                workflow_id, run_id, arm, enter_time, entry_event_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               RETURNING enrolment_id, entry_number, arm, run_id""",
            tenant_id,
            definition.key,
            version,
            member_id,
            entry_number,
            workflow_id,
            run_id,
            arm,
            now,
            entry_event_id,
        )
    assert row is not None
    metrics.enrolled(tenant_id, definition.key, arm)
    return EnrolmentRow(**dict(row))


async def entry_refusal(conn: Connection, tenant_id: str, key: str, version: int) -> Refusal | None:
    """Why `version` of the journey takes no one now, or None: the journey must be active and the
    version its live one (a version never made live, or replaced, enrols nobody, whoever starts a
    run of it). Holds the state row FOR SHARE until the caller's transaction ends: a pause or
    another activation (which update the row) waits for this entry, so the pause's signals find
    it, or this entry waits for the change and sees it. A journey without a row is a draft."""
    row = await conn.fetchrow(
        """SELECT state, live_version FROM journeys.journey_states
           WHERE tenant_id = $1 AND journey_key = $2 FOR SHARE""",
        tenant_id,
        key,
    )
    if row is None or row["state"] != "active":
        return Refusal("journey is not active")
    if version != row["live_version"]:
        return Refusal(f"version {version} is not live (version {row['live_version']} is)")
    return None


def refusal(
    definition: JourneyDefinition, last: asyncpg.Record | Mapping[str, Any] | None, now: dt.datetime
) -> Refusal | None:
    """Why the re-entry policy refuses a new entry, given the member's last enrolment (its
    `state` and `finish_time`), or None."""
    if last is None:
        return None
    if last["state"] == "active":
        return Refusal("already in this journey")
    if definition.reentry.policy == "never":
        return Refusal("was in this journey before and it allows no re-entry")
    cooldown = duration(definition.reentry.cooldown)
    if last["finish_time"] is not None and now < last["finish_time"] + cooldown:
        return Refusal(f"left this journey less than {definition.reentry.cooldown} ago")
    return None


@dataclass(frozen=True)
class Report:
    """What the journey report reads of a finished enrolment: the arms its splits gave the member
    (`{step id}:{arm}`) and its funnel per step ({"welcome": {"entered": 1, "sent": 1}})."""

    split_arms: Sequence[str] = ()
    step_figures: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


async def finish(
    db: Database,
    tenant_id: str,
    enrolment_id: int,
    state: str,
    now: dt.datetime,
    convert_time: dt.datetime | None,
    gmv_minor: int,
    report: Report | None = None,
) -> None:
    """Records how the enrolment ended (with what the report reads of it); repeating it changes
    nothing further. The split arms are added to those recorded as the member took them."""
    report = report or Report()
    async with db.transaction(tenant_id) as conn:
        await conn.execute(
            """UPDATE journeys.enrolments
               SET state = $3, finish_time = $4, convert_time = $5, gmv_minor = $6,
                   split_arms = split_arms || ARRAY(SELECT a FROM unnest($7::text[]) AS a
                                                    WHERE a <> ALL(split_arms)),
                   step_figures = $8::jsonb
               WHERE tenant_id = $1 AND enrolment_id = $2 AND state = 'active'""",
            tenant_id,
            enrolment_id,
            state,
            now,
            convert_time,
            gmv_minor,
            list(report.split_arms),
            json.dumps({k: dict(v) for k, v in report.step_figures.items()}, sort_keys=True),
        )


async def record_split(db: Database, tenant_id: str, enrolment_id: int, split_arm: str) -> None:
    """Adds `{step id}:{arm}` to the enrolment's split arms unless it is there (retries add nothing)."""
    async with db.transaction(tenant_id) as conn:
        await conn.execute(
            """UPDATE journeys.enrolments SET split_arms = split_arms || $3::text
               WHERE tenant_id = $1 AND enrolment_id = $2 AND $3 <> ALL(split_arms)""",
            tenant_id,
            enrolment_id,
            split_arm,
        )
